//! YAML files → typed, defaulted and individually validated objects, with
//! the file's positions in every error.
//!
//! A file is a stream of `---` separated documents; each is decoded on its
//! own (with [`serde_saphyr`]), so that one bad document costs only itself,
//! and the documents of large files are decoded on every core. Empty
//! documents count in a document's position, as in the YAML stream.
//!
//! Each document is read once in the common case: a mapping whose first keys
//! are `apiVersion` and `kind` is dispatched on them and deserialized into
//! its type from the same pass. Anything else (other key orders, errors)
//! takes a second, slower look that says exactly what is wrong and where.
//!
//! Scalars are typed as serde_yaml (and the API server, which sees JSON)
//! type them: a number or boolean field takes only a scalar that resolves to
//! one (a quoted `"80"` is a string), a string field takes any scalar
//! ([`super::scalars`]).

use std::fmt;
use std::num::NonZeroUsize;
use std::ops::RangeInclusive;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::endpoint_slice::{AddressType, normalize_endpoint_slice, validate_endpoint_slice};
use super::invalid::Invalid;
use super::names::DEFAULT_NAMESPACE;
use super::node::{normalize_node, validate_node};
use super::objects::{Kind, Object, TypedKey};
use super::scalars::{Compat, Spans};
use super::service::{normalize_service, validate_service};
use crate::store::ObjectKey;

/// Files (in all) at least this large are decoded on several threads.
const PARALLEL_BYTES: usize = 256 * 1024;

/// What one document of a file amounts to.
#[derive(Debug)]
pub enum Outcome {
    /// A valid object (not a Service).
    Object { key: TypedKey, object: Object },
    /// A defaulted Service: whether it is valid depends on the version it
    /// replaces, if any (the update rules), which only the whole directory
    /// tells. `created` is its validation as a create.
    Service {
        key: TypedKey,
        service: Arc<Service>,
        created: Result<(), Invalid>,
    },
    /// A valid object that is not served.
    Ignored { reason: String },
    /// A rejected document; `key` when it names an object.
    Invalid {
        key: Option<TypedKey>,
        reason: String,
    },
}

impl Outcome {
    /// The object the document names, if any.
    #[must_use]
    pub fn key(&self) -> Option<&TypedKey> {
        match self {
            Self::Object { key, .. } | Self::Service { key, .. } => Some(key),
            Self::Invalid { key, .. } => key.as_ref(),
            Self::Ignored { .. } => None,
        }
    }
}

/// One non-empty document.
#[derive(Debug)]
pub struct Document {
    /// From 1 (empty documents count).
    pub index: usize,
    pub outcome: Outcome,
}

/// Why nothing in a file can be trusted.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read the file: {0}")]
    Read(#[source] std::io::Error),
    #[error("malformed YAML: the file is not valid UTF-8: {0}")]
    NotUtf8(#[source] std::str::Utf8Error),
    #[error("malformed YAML: {0}")]
    Malformed(#[source] YamlError),
}

/// A YAML syntax error, where the file has it.
#[derive(Debug, thiserror::Error)]
#[error("{message} at line {line} column {column}{still_open}")]
pub struct YamlError {
    message: String,
    line: usize,
    column: usize,
    /// For a construct left open: where the document ends.
    still_open: StillOpen,
}

#[derive(Debug)]
struct StillOpen(Option<(usize, usize)>);

impl fmt::Display for StillOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some((line, column)) => write!(
                f,
                ", still open at line {line} column {column} (the end of the document)"
            ),
            None => Ok(()),
        }
    }
}

/// A document that does not deserialize into its type: the field, why,
/// and where.
#[derive(Debug, thiserror::Error)]
#[error("{}{message} at line {line} column {column}", field_prefix(.field))]
pub struct TypeError {
    field: String,
    message: String,
    line: usize,
    column: usize,
}

fn field_prefix(field: &str) -> String {
    if field.is_empty() || field == "." {
        String::new()
    } else {
        format!("{field}: ")
    }
}

/// A file's documents, or why it cannot be trusted.
#[derive(Debug)]
pub enum Parsed {
    Broken(FileError),
    Documents(Vec<Document>),
}

impl Parsed {
    /// The objects the file's documents name.
    pub fn keys(&self) -> impl Iterator<Item = &TypedKey> {
        let documents = match self {
            Self::Documents(documents) => documents.as_slice(),
            Self::Broken(_) => &[],
        };
        documents.iter().filter_map(|d| d.outcome.key())
    }
}

/// One document of a file: its text and the line it starts on (from 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece<'a> {
    pub text: &'a str,
    pub first_line: usize,
}

impl Piece<'_> {
    /// The line and column just past the document.
    fn end(&self) -> (usize, usize) {
        let lines = self.text.matches('\n').count();
        let last = self.text.rsplit('\n').next().unwrap_or_default();
        (self.first_line + lines, last.chars().count() + 1)
    }

    /// A line of the document as a line of the file.
    fn line(&self, line: usize) -> usize {
        self.first_line + line.saturating_sub(1)
    }
}

/// Decodes files (their bytes), every document on its own, large inputs on
/// several threads.
#[must_use]
pub fn decode_files(contents: &[&[u8]], range: &RangeInclusive<u16>) -> Vec<Parsed> {
    let mut texts = Vec::with_capacity(contents.len());
    let mut pieces = Vec::new();
    for (file, bytes) in contents.iter().enumerate() {
        match std::str::from_utf8(bytes) {
            Ok(text) => {
                texts.push(Ok(()));
                pieces.extend(split_documents(text).into_iter().map(|p| (file, p)));
            }
            Err(e) => texts.push(Err(e)),
        }
    }
    let outcomes = parallel_map(
        &pieces,
        |(_, p)| p.text.len(),
        |(_, p)| decode_document(p, range),
    );
    let mut parsed: Vec<Parsed> = texts
        .into_iter()
        .map(|t| match t {
            Ok(()) => Parsed::Documents(Vec::new()),
            Err(e) => Parsed::Broken(FileError::NotUtf8(e)),
        })
        .collect();
    let mut index = vec![0usize; contents.len()];
    for ((file, _), outcome) in pieces.iter().zip(outcomes) {
        index[*file] += 1;
        let Parsed::Documents(documents) = &mut parsed[*file] else {
            continue;
        };
        match outcome {
            Ok(Some(outcome)) => documents.push(Document {
                index: index[*file],
                outcome,
            }),
            Ok(None) => {}
            Err(e) => parsed[*file] = Parsed::Broken(FileError::Malformed(e)),
        }
    }
    parsed
}

/// Maps `items` with `f`, on several threads when their `weight` is large.
fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    weight: impl Fn(&T) -> usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let total: usize = items.iter().map(&weight).sum();
    let threads = std::thread::available_parallelism()
        .map_or(1, NonZeroUsize::get)
        .min(8);
    if threads < 2 || total < PARALLEL_BYTES {
        return items.iter().map(&f).collect();
    }
    // Contiguous chunks of about the same weight.
    let per_thread = total.div_ceil(threads);
    let mut bounds = vec![0];
    let mut acc = 0;
    for (i, item) in items.iter().enumerate() {
        acc += weight(item);
        if acc >= per_thread * bounds.len() && bounds.len() < threads {
            bounds.push(i + 1);
        }
    }
    if bounds.last() != Some(&items.len()) {
        bounds.push(items.len());
    }
    let f = &f;
    std::thread::scope(|scope| {
        let mut chunks = bounds.windows(2).map(|w| &items[w[0]..w[1]]);
        let first = chunks.next().unwrap_or_default();
        let handles: Vec<_> = chunks
            .map(|chunk| scope.spawn(move || chunk.iter().map(f).collect::<Vec<R>>()))
            .collect();
        let mut out: Vec<R> = first.iter().map(f).collect();
        for handle in handles {
            match handle.join() {
                Ok(part) => out.extend(part),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out
    })
}

/// Splits a YAML stream into its documents, as a YAML parser delimits them:
/// a line starting with `---` starts one (and ends the one before), `...`
/// ends one, and content outside any starts an implicit one. Comments and
/// blank lines alone before the first document are none; `---` followed by
/// nothing is an (empty) document.
#[must_use]
pub fn split_documents<'a>(text: &'a str) -> Vec<Piece<'a>> {
    fn blank(line: &str) -> bool {
        let line = line.trim_start();
        line.is_empty() || line.starts_with('#')
    }
    fn marker(line: &str, marker: &str) -> bool {
        line.strip_prefix(marker)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
    }
    let bom = if text.starts_with('\u{feff}') { 3 } else { 0 };
    let mut pieces = Vec::new();
    // Byte offset and line of the open document's start.
    let mut open: Option<(usize, usize)> = None;
    let mut explicit = false;
    let mut content = false;
    let mut directives: Option<(usize, usize)> = None;
    let mut offset = bom;
    let close = |open: Option<(usize, usize)>, end: usize, pieces: &mut Vec<Piece<'a>>| {
        if let Some((start, first_line)) = open {
            pieces.push(Piece {
                text: &text[start..end],
                first_line,
            });
        }
    };
    for (line_number, raw) in (1..).zip(text[bom..].split_inclusive('\n')) {
        let line = raw.trim_end_matches(['\n', '\r']);
        if marker(line, "---") {
            if explicit || content {
                close(open, offset, &mut pieces);
            }
            open = Some(directives.take().unwrap_or((offset, line_number)));
            explicit = true;
            content = !blank(&line[3..]);
        } else if marker(line, "...") {
            if explicit || content {
                close(open, offset, &mut pieces);
            }
            open = None;
            explicit = false;
            content = false;
        } else if open.is_none() {
            if line.starts_with('%') {
                directives.get_or_insert((offset, line_number));
            } else if !blank(line) {
                open = Some(directives.take().unwrap_or((offset, line_number)));
                content = true;
            }
        } else if !content && !blank(line) {
            content = true;
        }
        offset += raw.len();
    }
    if explicit || content {
        close(open, text.len(), &mut pieces);
    }
    pieces
}

fn options() -> serde_saphyr::Options {
    serde_saphyr::options! { with_snippet: false }
}

/// One document; `None` for an empty one, an error when it is not YAML.
fn decode_document(
    piece: &Piece<'_>,
    range: &RangeInclusive<u16>,
) -> Result<Option<Outcome>, YamlError> {
    let fast = serde_saphyr::with_deserializer_from_str_with_options(piece.text, options(), |de| {
        Compat::new(de).deserialize_any(Root)
    });
    match fast {
        Ok(Fast::Empty) => Ok(None),
        Ok(Fast::NotMapping(found)) => Ok(Some(Outcome::Invalid {
            key: None,
            reason: format!("expected a Kubernetes object (a mapping), found {found}"),
        })),
        Ok(Fast::Typed(typed)) => Ok(Some(finish(typed, range))),
        Ok(Fast::Slow) | Err(_) => slow(piece, range),
    }
}

/// The slower look: is the document YAML, what does its header say, and
/// which field does not fit its type, where.
fn slow(piece: &Piece<'_>, range: &RangeInclusive<u16>) -> Result<Option<Outcome>, YamlError> {
    check_syntax(piece)?;
    let header =
        serde_saphyr::with_deserializer_from_str_with_options(piece.text, options(), |de| {
            Compat::new(de).deserialize_any(HeaderVisitor)
        })
        .map_err(|e| yaml_error(piece, &e))?;
    let invalid =
        |key: Option<TypedKey>, reason: String| Ok(Some(Outcome::Invalid { key, reason }));
    let header = match header {
        Header::Empty => return Ok(None),
        Header::NotMapping(found) => {
            return invalid(
                None,
                format!("expected a Kubernetes object (a mapping), found {found}"),
            );
        }
        Header::Mapping(header) => header,
    };
    let (Some(api_version), Some(kind)) = (header.api_version, header.kind) else {
        return invalid(None, "missing apiVersion/kind".to_owned());
    };
    let Some(kind) = Kind::from_name(&kind) else {
        return invalid(
            None,
            format!("unknown kind {kind} (supported: Service, EndpointSlice, Node)"),
        );
    };
    if api_version != kind.api_version() {
        return invalid(
            None,
            format!(
                "apiVersion {api_version} is not supported for kind {kind} (expected {})",
                kind.api_version()
            ),
        );
    }
    let key = header.name.map(|name| TypedKey {
        kind,
        key: ObjectKey {
            namespace: if kind.namespaced() {
                header
                    .namespace
                    .filter(|ns| !ns.is_empty())
                    .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned())
                    .into()
            } else {
                "".into()
            },
            name: name.into(),
        },
    });
    let described = key
        .as_ref()
        .map_or_else(|| kind.to_string(), ToString::to_string);
    let typed = match kind {
        Kind::Service => typed_with_path::<Box<Service>>(piece).map(Typed::Service),
        Kind::EndpointSlice => {
            typed_with_path::<Box<EndpointSlice>>(piece).map(Typed::EndpointSlice)
        }
        Kind::Node => typed_with_path::<Box<Node>>(piece).map(Typed::Node),
    };
    match typed {
        Ok(typed) => Ok(Some(finish(typed, range))),
        Err(e) => invalid(key, format!("invalid {described}: {e}")),
    }
}

/// Deserializes the document as `T`, saying which field failed where.
fn typed_with_path<T: for<'de> de::Deserialize<'de>>(piece: &Piece<'_>) -> Result<T, TypeError> {
    let mut field = String::new();
    let spans = Spans::default();
    let result =
        serde_saphyr::with_deserializer_from_str_with_options(piece.text, options(), |de| {
            let mut track = serde_path_to_error::Track::new();
            let compat = Compat {
                inner: de,
                spans: Some(&spans),
            };
            let result = T::deserialize(serde_path_to_error::Deserializer::new(compat, &mut track));
            if result.is_err() {
                field = track.path().to_string();
            }
            result
        });
    result.map_err(|e| {
        let (line, column) = spans.take().unwrap_or_else(|| position(&e));
        TypeError {
            field,
            message: message_of(&e),
            line: piece.line(line),
            column,
        }
    })
}

/// A syntax error of the document, if it has one.
fn check_syntax(piece: &Piece<'_>) -> Result<(), YamlError> {
    let mut parser = serde_saphyr::granit_parser::Parser::new_from_str(piece.text);
    while let Some(event) = parser.next_event() {
        if let Err(e) = event {
            let message = e.info();
            let still_open = message.starts_with("unclosed").then(|| piece.end());
            return Err(YamlError {
                message,
                line: piece.line(e.marker().line()),
                column: e.marker().col() + 1,
                still_open: StillOpen(still_open),
            });
        }
    }
    Ok(())
}

/// A parse error that the syntax check did not see (a duplicate key, say).
fn yaml_error(piece: &Piece<'_>, e: &serde_saphyr::Error) -> YamlError {
    let (line, column) = position(e);
    YamlError {
        message: message_of(e),
        line: piece.line(line),
        column,
        still_open: StillOpen(None),
    }
}

/// Where serde-saphyr places an error (line, column in the document).
fn position(e: &serde_saphyr::Error) -> (usize, usize) {
    e.location().map_or((0, 0), |l| {
        (
            usize::try_from(l.line()).unwrap_or(usize::MAX),
            usize::try_from(l.column()).unwrap_or(usize::MAX),
        )
    })
}

/// The error's message without the position serde-saphyr appends (the
/// position is given as the file has it instead).
fn message_of(e: &serde_saphyr::Error) -> String {
    let text = e.to_string();
    match e.location() {
        Some(l) => {
            let suffix = format!(" at line {}, column {}", l.line(), l.column());
            text.strip_suffix(&suffix).unwrap_or(&text).to_owned()
        }
        None => text,
    }
}

/// A typed, not yet defaulted object.
enum Typed {
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    Node(Box<Node>),
}

/// Defaults and validates a typed object on its own.
fn finish(typed: Typed, range: &RangeInclusive<u16>) -> Outcome {
    fn key_of(
        kind: Kind,
        metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    ) -> Option<TypedKey> {
        Some(TypedKey {
            kind,
            key: ObjectKey {
                namespace: metadata.namespace.clone().unwrap_or_default().into(),
                name: metadata.name.clone()?.into(),
            },
        })
    }
    match typed {
        Typed::Service(service) => {
            let mut service = *service;
            normalize_service(&mut service);
            let created = validate_service(&service, range);
            match key_of(Kind::Service, &service.metadata) {
                Some(key) => Outcome::Service {
                    key,
                    service: Arc::new(service),
                    created,
                },
                // Without a name it cannot replace anything and is invalid anyway.
                None => Outcome::Invalid {
                    key: None,
                    reason: format!(
                        "invalid Service: {}",
                        created.err().map_or_else(
                            || "metadata.name: Required value: name is required".to_owned(),
                            |e| e.to_string()
                        )
                    ),
                },
            }
        }
        Typed::EndpointSlice(slice) => {
            let mut slice = *slice;
            normalize_endpoint_slice(&mut slice);
            // Kept for as long as the file provides it: without the room
            // decoding grew the list by (an endpoint is some 400 bytes).
            slice.endpoints.shrink_to_fit();
            let key = key_of(Kind::EndpointSlice, &slice.metadata);
            let described = key
                .as_ref()
                .map_or_else(|| Kind::EndpointSlice.to_string(), ToString::to_string);
            match (validate_endpoint_slice(&slice), key) {
                (Ok(AddressType::Ipv4), Some(key)) => Outcome::Object {
                    key,
                    object: Object::EndpointSlice(Arc::new(slice)),
                },
                (Ok(address_type), _) => Outcome::Ignored {
                    reason: format!(
                        "{described} has addressType {}; only IPv4 is served, ignoring it",
                        address_type.as_str()
                    ),
                },
                (Err(e), key) => Outcome::Invalid {
                    key,
                    reason: format!("invalid {described}: {e}"),
                },
            }
        }
        Typed::Node(node) => {
            let mut node = *node;
            normalize_node(&mut node);
            let key = key_of(Kind::Node, &node.metadata);
            let described = key
                .as_ref()
                .map_or_else(|| Kind::Node.to_string(), ToString::to_string);
            match (validate_node(&node), key) {
                (Ok(()), Some(key)) => Outcome::Object {
                    key,
                    object: Object::Node(Arc::new(node)),
                },
                (Err(e), key) => Outcome::Invalid {
                    key,
                    reason: format!("invalid {described}: {e}"),
                },
                (Ok(()), None) => Outcome::Invalid {
                    key: None,
                    reason: format!(
                        "invalid {described}: metadata.name: Required value: name is required"
                    ),
                },
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The one-pass reading of a document.

/// What the one-pass reading made of a document.
enum Fast {
    Empty,
    NotMapping(&'static str),
    Typed(Typed),
    /// Not the common shape: look again.
    Slow,
}

/// The document's root: dispatched on `apiVersion` and `kind` when they
/// come first.
struct Root;

impl<'de> Visitor<'de> for Root {
    type Value = Fast;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Kubernetes object")
    }

    fn visit_unit<E>(self) -> Result<Fast, E> {
        Ok(Fast::Empty)
    }

    fn visit_none<E>(self) -> Result<Fast, E> {
        Ok(Fast::Empty)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Fast, E> {
        Ok(Fast::NotMapping("a boolean"))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Fast, E> {
        Ok(Fast::NotMapping("a number"))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Fast, E> {
        Ok(Fast::NotMapping("a number"))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Fast, E> {
        Ok(Fast::NotMapping("a number"))
    }

    fn visit_str<E>(self, _: &str) -> Result<Fast, E> {
        Ok(Fast::NotMapping("a string"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Fast, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Fast::NotMapping("a list"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fast, A::Error> {
        let mut api_version = None;
        let mut kind = None;
        while api_version.is_none() || kind.is_none() {
            let Some(name) = map.next_key::<Scalar>()? else {
                return Ok(Fast::Slow);
            };
            let slot = match name.0.as_deref() {
                Some("apiVersion") if api_version.is_none() => &mut api_version,
                Some("kind") if kind.is_none() => &mut kind,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    return drain(map);
                }
            };
            match map.next_value::<Scalar>()?.0 {
                Some(value) => *slot = Some(value),
                None => return drain(map),
            }
        }
        let (Some(api_version), Some(kind)) = (api_version, kind) else {
            return drain(map);
        };
        let Some(kind) = Kind::from_name(&kind).filter(|k| k.api_version() == api_version) else {
            return drain(map);
        };
        let rest = MapAccessDeserializer::new(map);
        Ok(Fast::Typed(match kind {
            Kind::Service => Typed::Service(de::Deserialize::deserialize(rest)?),
            Kind::EndpointSlice => Typed::EndpointSlice(de::Deserialize::deserialize(rest)?),
            Kind::Node => Typed::Node(de::Deserialize::deserialize(rest)?),
        }))
    }
}

fn drain<'de, A: MapAccess<'de>>(mut map: A) -> Result<Fast, A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(Fast::Slow)
}

/// A string scalar (`None` for any other value), as the header fields are read.
struct Scalar(Option<String>);

impl<'de> de::Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }

            fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(Some(v.to_owned())))
            }

            fn visit_string<E>(self, v: String) -> Result<Scalar, E> {
                Ok(Scalar(Some(v)))
            }

            fn visit_bool<E>(self, _: bool) -> Result<Scalar, E> {
                Ok(Scalar(None))
            }

            fn visit_i64<E>(self, _: i64) -> Result<Scalar, E> {
                Ok(Scalar(None))
            }

            fn visit_u64<E>(self, _: u64) -> Result<Scalar, E> {
                Ok(Scalar(None))
            }

            fn visit_f64<E>(self, _: f64) -> Result<Scalar, E> {
                Ok(Scalar(None))
            }

            fn visit_unit<E>(self) -> Result<Scalar, E> {
                Ok(Scalar(None))
            }

            fn visit_none<E>(self) -> Result<Scalar, E> {
                Ok(Scalar(None))
            }

            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Scalar, D::Error> {
                <Scalar as de::Deserialize>::deserialize(d)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar(None))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar(None))
            }
        }
        deserializer.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------
// The header of a document, for the slower look.

enum Header {
    Empty,
    NotMapping(&'static str),
    Mapping(HeaderFields),
}

#[derive(Default)]
struct HeaderFields {
    api_version: Option<String>,
    kind: Option<String>,
    name: Option<String>,
    namespace: Option<String>,
}

struct HeaderVisitor;

impl<'de> Visitor<'de> for HeaderVisitor {
    type Value = Header;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Kubernetes object")
    }

    fn visit_unit<E>(self) -> Result<Header, E> {
        Ok(Header::Empty)
    }

    fn visit_none<E>(self) -> Result<Header, E> {
        Ok(Header::Empty)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Header, E> {
        Ok(Header::NotMapping("a boolean"))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Header, E> {
        Ok(Header::NotMapping("a number"))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Header, E> {
        Ok(Header::NotMapping("a number"))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Header, E> {
        Ok(Header::NotMapping("a number"))
    }

    fn visit_str<E>(self, _: &str) -> Result<Header, E> {
        Ok(Header::NotMapping("a string"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Header, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Header::NotMapping("a list"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Header, A::Error> {
        let mut fields = HeaderFields::default();
        while let Some(name) = map.next_key::<Scalar>()? {
            match name.0.as_deref() {
                Some("apiVersion") => fields.api_version = map.next_value::<Scalar>()?.0,
                Some("kind") => fields.kind = map.next_value::<Scalar>()?.0,
                Some("metadata") => {
                    let metadata = map.next_value::<Metadata>()?;
                    fields.name = metadata.name;
                    fields.namespace = metadata.namespace;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Header::Mapping(fields))
    }
}

/// `metadata.name` and `metadata.namespace` when they are strings.
#[derive(Default)]
struct Metadata {
    name: Option<String>,
    namespace: Option<String>,
}

impl<'de> de::Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Metadata;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Metadata, A::Error> {
                let mut metadata = Metadata::default();
                while let Some(name) = map.next_key::<Scalar>()? {
                    match name.0.as_deref() {
                        Some("name") => metadata.name = map.next_value::<Scalar>()?.0,
                        Some("namespace") => metadata.namespace = map.next_value::<Scalar>()?.0,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(metadata)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Metadata, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Metadata::default())
            }

            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Metadata, D::Error> {
                <Metadata as de::Deserialize>::deserialize(d)
            }

            fn visit_none<E>(self) -> Result<Metadata, E> {
                Ok(Metadata::default())
            }

            fn visit_unit<E>(self) -> Result<Metadata, E> {
                Ok(Metadata::default())
            }

            fn visit_bool<E>(self, _: bool) -> Result<Metadata, E> {
                Ok(Metadata::default())
            }

            fn visit_i64<E>(self, _: i64) -> Result<Metadata, E> {
                Ok(Metadata::default())
            }

            fn visit_u64<E>(self, _: u64) -> Result<Metadata, E> {
                Ok(Metadata::default())
            }

            fn visit_f64<E>(self, _: f64) -> Result<Metadata, E> {
                Ok(Metadata::default())
            }

            fn visit_str<E>(self, _: &str) -> Result<Metadata, E> {
                Ok(Metadata::default())
            }
        }
        deserializer.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RANGE: RangeInclusive<u16> = 30000..=32767;

    fn texts(text: &str) -> Vec<(&str, usize)> {
        split_documents(text)
            .into_iter()
            .map(|p| (p.text, p.first_line))
            .collect()
    }

    #[test]
    fn documents_are_split_as_a_yaml_stream_delimits_them() {
        assert_eq!(texts(""), vec![]);
        assert_eq!(texts("# only a comment\n"), vec![]);
        assert_eq!(texts("a: 1\n"), vec![("a: 1\n", 1)]);
        assert_eq!(texts("---\na: 1\n"), vec![("---\na: 1\n", 1)]);
        assert_eq!(
            texts("# head\n---\na: 1\n---\n# empty\n---\nb: 2\n"),
            vec![
                ("---\na: 1\n", 2),
                ("---\n# empty\n", 4),
                ("---\nb: 2\n", 6)
            ]
        );
        assert_eq!(texts("a: 1\n---\n"), vec![("a: 1\n", 1), ("---\n", 2)]);
        assert_eq!(
            texts("a: 1\n...\nb: 2\n"),
            vec![("a: 1\n", 1), ("b: 2\n", 3)]
        );
        assert_eq!(
            texts("%YAML 1.2\n--- {a: 1}\n---x: 1\n"),
            vec![("%YAML 1.2\n--- {a: 1}\n---x: 1\n", 1)]
        );
        assert_eq!(texts("a: 1\r\n---\r\nb: 2\r\n").len(), 2);
    }

    fn decode(text: &str) -> Parsed {
        decode_files(&[text.as_bytes()], &RANGE)
            .pop()
            .expect("one file")
    }

    fn documents(text: &str) -> Vec<Document> {
        match decode(text) {
            Parsed::Documents(documents) => documents,
            Parsed::Broken(e) => panic!("broken: {e}"),
        }
    }

    fn reason(document: &Document) -> &str {
        match &document.outcome {
            Outcome::Invalid { reason, .. } | Outcome::Ignored { reason } => reason,
            other => panic!("not rejected: {other:?}"),
        }
    }

    #[test]
    fn scalars_are_typed_as_serde_yaml_types_them() {
        let doc = |port: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: web, labels: {{a: 1, b: true}}}}\nspec:\n  ports:\n  - port: {port}\n"
            )
        };
        let docs = documents(&doc("80"));
        let Outcome::Service { service, .. } = &docs[0].outcome else {
            panic!("{:?}", docs[0].outcome);
        };
        let labels = service.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels["a"], "1");
        assert_eq!(labels["b"], "true");
        for (port, message) in [
            (
                "\"80\"",
                "spec.ports[0].port: invalid type: string \"80\", expected i32 at line 6 column 11",
            ),
            (
                "eighty",
                "spec.ports[0].port: invalid type: string \"eighty\", expected i32 at line 6 column 11",
            ),
            (
                "1.5",
                "spec.ports[0].port: invalid type: floating point `1.5`, expected i32 at line 6 column 11",
            ),
        ] {
            let docs = documents(&doc(port));
            assert_eq!(
                reason(&docs[0]),
                format!("invalid Service default/web: {message}"),
                "{port}"
            );
        }
    }

    #[test]
    fn other_key_orders_decode_the_same() {
        let first = documents("apiVersion: v1\nkind: Node\nmetadata: {name: n}\n");
        let later = documents("metadata: {name: n}\nkind: Node\napiVersion: v1\n");
        let (Outcome::Object { object: a, .. }, Outcome::Object { object: b, .. }) =
            (&first[0].outcome, &later[0].outcome)
        else {
            panic!("{first:?} {later:?}");
        };
        assert!(a.same(b));
    }

    #[test]
    fn positions_are_the_files() {
        let text = "apiVersion: v1\nkind: Node\nmetadata: {name: n}\n---\n\n---\napiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: x}]}\n";
        let docs = documents(text);
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].index, 3);
        assert!(
            reason(&docs[1]).ends_with("at line 10 column 23"),
            "{}",
            reason(&docs[1])
        );

        let Parsed::Broken(e) = decode("a: 1\n---\nb: [x\n") else {
            panic!("not broken");
        };
        let message = e.to_string();
        assert!(message.starts_with("malformed YAML: "), "{message}");
        assert!(message.contains("line 3 column 4"), "{message}");
        assert!(message.contains("line 4 column 1"), "{message}");
    }
}
