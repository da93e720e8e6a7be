//! serde_yaml's scalar typing over serde-saphyr: a number or boolean field
//! takes only a scalar that resolves to one (a quoted `"80"` is a string,
//! as in serde_yaml and in the JSON the API server sees), with serde's own
//! `invalid type` message when it does not fit; a string field takes any
//! scalar. Optionally it also says where the first scalar that did not fit
//! is.

use std::cell::RefCell;
use std::fmt;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, IgnoredAny, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};

/// A deserializer that asks for numbers and booleans as whatever the
/// scalar resolves to (so that the field's type decides, with serde's
/// `invalid type` message when it does not fit), and for everything else
/// as the wrapped deserializer would.
///
/// With `spans`, such a scalar is read with its position, and the position
/// of the first one that does not fit is kept there (serde-saphyr places a
/// type's own error at the enclosing node).
pub struct Compat<'s, D> {
    pub inner: D,
    pub spans: Option<&'s Spans>,
}

/// Where the first scalar that did not fit its field is (line, column).
pub type Spans = RefCell<Option<(usize, usize)>>;

impl<D> Compat<'_, D> {
    pub fn new(inner: D) -> Self {
        Self { inner, spans: None }
    }
}

macro_rules! via_any {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            match self.spans {
                None => self.inner.deserialize_any(CompatVisitor { inner: visitor, spans: None }),
                Some(spans) => spanned(self.inner, visitor, spans),
            }
        }
    )*};
}

macro_rules! forward {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            self.inner.$method(CompatVisitor { inner: visitor, spans: self.spans })
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Compat<'_, D> {
    type Error = D::Error;

    via_any! {
        deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32
        deserialize_i64 deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32
        deserialize_u64 deserialize_u128 deserialize_f32 deserialize_f64
    }

    forward! {
        deserialize_any deserialize_char deserialize_str deserialize_string deserialize_bytes
        deserialize_byte_buf deserialize_option deserialize_unit deserialize_seq
        deserialize_map deserialize_identifier deserialize_ignored_any
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner.deserialize_unit_struct(
            name,
            CompatVisitor {
                inner: visitor,
                spans: self.spans,
            },
        )
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner.deserialize_newtype_struct(
            name,
            CompatVisitor {
                inner: visitor,
                spans: self.spans,
            },
        )
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner.deserialize_tuple(
            len,
            CompatVisitor {
                inner: visitor,
                spans: self.spans,
            },
        )
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner.deserialize_tuple_struct(
            name,
            len,
            CompatVisitor {
                inner: visitor,
                spans: self.spans,
            },
        )
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner.deserialize_struct(
            name,
            fields,
            CompatVisitor {
                inner: visitor,
                spans: self.spans,
            },
        )
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner.deserialize_enum(
            name,
            variants,
            CompatVisitor {
                inner: visitor,
                spans: self.spans,
            },
        )
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

/// Reads a scalar with its position, hands it to `visitor`, and keeps the
/// position when it does not fit.
fn spanned<'de, D: Deserializer<'de>, V: Visitor<'de>>(
    deserializer: D,
    visitor: V,
    spans: &Spans,
) -> Result<V::Value, D::Error> {
    let scalar = <serde_saphyr::Spanned<Any> as de::Deserialize>::deserialize(deserializer)?;
    let result = scalar.value.replay(visitor);
    if result.is_err() {
        spans.borrow_mut().get_or_insert((
            usize::try_from(scalar.referenced.line()).unwrap_or(usize::MAX),
            usize::try_from(scalar.referenced.column()).unwrap_or(usize::MAX),
        ));
    }
    result
}

/// Any value, as far as a number or boolean field needs to know it.
enum Any {
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(String),
    Unit,
    Seq,
    Map,
}

impl Any {
    fn replay<'de, V: Visitor<'de>, E: de::Error>(self, visitor: V) -> Result<V::Value, E> {
        match self {
            Self::Bool(v) => visitor.visit_bool(v),
            Self::I64(v) => visitor.visit_i64(v),
            Self::U64(v) => visitor.visit_u64(v),
            Self::F64(v) => visitor.visit_f64(v),
            Self::Str(v) => visitor.visit_str(&v),
            Self::Unit => visitor.visit_unit(),
            Self::Seq => Err(E::invalid_type(de::Unexpected::Seq, &visitor)),
            Self::Map => Err(E::invalid_type(de::Unexpected::Map, &visitor)),
        }
    }
}

impl<'de> de::Deserialize<'de> for Any {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Any;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }

            fn visit_bool<E>(self, v: bool) -> Result<Any, E> {
                Ok(Any::Bool(v))
            }

            fn visit_i64<E>(self, v: i64) -> Result<Any, E> {
                Ok(Any::I64(v))
            }

            fn visit_u64<E>(self, v: u64) -> Result<Any, E> {
                Ok(Any::U64(v))
            }

            fn visit_f64<E>(self, v: f64) -> Result<Any, E> {
                Ok(Any::F64(v))
            }

            fn visit_str<E>(self, v: &str) -> Result<Any, E> {
                Ok(Any::Str(v.to_owned()))
            }

            fn visit_unit<E>(self) -> Result<Any, E> {
                Ok(Any::Unit)
            }

            fn visit_none<E>(self) -> Result<Any, E> {
                Ok(Any::Unit)
            }

            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Any, D::Error> {
                <Any as de::Deserialize>::deserialize(d)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Any, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Any::Seq)
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Any, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Any::Map)
            }
        }
        deserializer.deserialize_any(V)
    }
}

struct CompatVisitor<'s, V> {
    inner: V,
    spans: Option<&'s Spans>,
}

macro_rules! visit {
    ($($method:ident($ty:ty))*) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
            self.inner.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for CompatVisitor<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    visit! {
        visit_bool(bool) visit_i8(i8) visit_i16(i16) visit_i32(i32) visit_i64(i64)
        visit_i128(i128) visit_u8(u8) visit_u16(u16) visit_u32(u32) visit_u64(u64)
        visit_u128(u128) visit_f32(f32) visit_f64(f64) visit_char(char) visit_str(&str)
        visit_borrowed_str(&'de str) visit_string(String) visit_bytes(&[u8])
        visit_borrowed_bytes(&'de [u8]) visit_byte_buf(Vec<u8>)
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.inner.visit_some(Compat {
            inner: d,
            spans: self.spans,
        })
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.inner.visit_newtype_struct(Compat {
            inner: d,
            spans: self.spans,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.inner.visit_seq(CompatAccess {
            inner: seq,
            spans: self.spans,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.inner.visit_map(CompatAccess {
            inner: map,
            spans: self.spans,
        })
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.inner.visit_enum(CompatAccess {
            inner: data,
            spans: self.spans,
        })
    }
}

/// A sequence, map, enum or variant whose parts are read through [`Compat`].
struct CompatAccess<'s, A> {
    inner: A,
    spans: Option<&'s Spans>,
}

impl<'s, A> CompatAccess<'s, A> {
    fn seed<S>(&self, seed: S) -> CompatSeed<'s, S> {
        CompatSeed {
            inner: seed,
            spans: self.spans,
        }
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for CompatAccess<'_, A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        let seed = self.seed(seed);
        self.inner.next_element_seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for CompatAccess<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        let seed = self.seed(seed);
        self.inner.next_key_seed(seed)
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        let seed = self.seed(seed);
        self.inner.next_value_seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'s, 'de, A: EnumAccess<'de>> EnumAccess<'de> for CompatAccess<'s, A> {
    type Error = A::Error;
    type Variant = CompatAccess<'s, A::Variant>;

    fn variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<(T::Value, Self::Variant), A::Error> {
        let spans = self.spans;
        let seed = self.seed(seed);
        self.inner.variant_seed(seed).map(|(value, variant)| {
            (
                value,
                CompatAccess {
                    inner: variant,
                    spans,
                },
            )
        })
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for CompatAccess<'_, A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        let seed = self.seed(seed);
        self.inner.newtype_variant_seed(seed)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.inner.tuple_variant(
            len,
            CompatVisitor {
                inner: visitor,
                spans: self.spans,
            },
        )
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.inner.struct_variant(
            fields,
            CompatVisitor {
                inner: visitor,
                spans: self.spans,
            },
        )
    }
}

struct CompatSeed<'s, S> {
    inner: S,
    spans: Option<&'s Spans>,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for CompatSeed<'_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<S::Value, D::Error> {
        self.inner.deserialize(Compat {
            inner: deserializer,
            spans: self.spans,
        })
    }
}
