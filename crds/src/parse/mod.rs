//! Reading Istio objects from multi-document YAML.
//!
//! [`parse_documents`] distinguishes two failure levels:
//! - [`FileError`]: the text is not valid YAML (or not readable as a whole). Nothing in
//!   the file can be trusted; a caller watching files should keep the file's last good
//!   content.
//! - [`DocumentError`]: one document is valid YAML but not a valid object of a
//!   supported kind (unknown kind or apiVersion, unknown field, wrong type, ...). The
//!   other documents of the file are still returned.
//!
//! Semantic checks (host names, weights, ...) are not done here; see
//! [`crate::validate::validate`].

// Errors carry the whole context (file, kind, name, field, ...) by value; they are
// produced once per bad document, so their size does not matter.
#![allow(clippy::result_large_err)]

mod de;
mod tree;

#[cfg(test)]
mod tests;

use std::fmt;

use serde::de::DeserializeOwned;

use crate::object::{IstioObject, Kind};
use crate::validate::{ValidationError, validate};

pub use tree::Position;
use tree::{Node, SpannedNode};

/// Top-level keys of a document; anything else is reported as an unknown field.
const TOP_LEVEL_KEYS: [&str; 5] = ["apiVersion", "kind", "metadata", "spec", "status"];

/// Fields of `metadata` (Kubernetes `ObjectMeta`). Its deserializer ignores unknown
/// fields, and a misspelt `namespace` would silently move the object to the default
/// namespace, so keys are checked against this list first.
const METADATA_KEYS: [&str; 15] = [
    "annotations",
    "creationTimestamp",
    "deletionGracePeriodSeconds",
    "deletionTimestamp",
    "finalizers",
    "generateName",
    "generation",
    "labels",
    "managedFields",
    "name",
    "namespace",
    "ownerReferences",
    "resourceVersion",
    "selfLink",
    "uid",
];

/// One successfully parsed document.
#[derive(Clone)]
pub struct Document {
    /// 0-based position among the file's non-empty documents.
    pub index: usize,
    /// Line where the document's content starts (1-based), when known.
    pub line: Option<u64>,
    /// `apiVersion` as written (the object itself is always `<group>/v1`).
    pub api_version: String,
    pub object: IstioObject,
    tree: SpannedNode,
}

impl Document {
    /// Line (1-based) of a field path such as `spec.http[0].route[1].weight` (the
    /// format of [`ValidationError::field`]). Falls back to the closest enclosing
    /// field that exists in the source, then to the document start.
    pub fn line_of(&self, field: &str) -> Option<u64> {
        self.tree.locate(field).map(|p| p.line).or(self.line)
    }

    /// Like [`line_of`](Self::line_of), with the column.
    pub fn position_of(&self, field: &str) -> Option<Position> {
        self.tree.locate(field)
    }

    /// Runs [`validate`] on the object.
    pub fn validate(&self) -> Vec<ValidationError> {
        validate(&self.object)
    }
}

impl fmt::Debug for Document {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Document")
            .field("index", &self.index)
            .field("line", &self.line)
            .field("api_version", &self.api_version)
            .field("object", &self.object)
            .finish_non_exhaustive()
    }
}

/// The whole file is unusable: a YAML syntax error or similar.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct FileError {
    /// File name as given to [`parse_documents`].
    pub file: String,
    /// 1-based line of the error, when known.
    pub line: Option<u64>,
    /// 1-based column of the error, when known.
    pub column: Option<u64>,
    pub message: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, ": invalid YAML: {}", self.message)
    }
}

/// What is wrong with a document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DocumentErrorReason {
    /// The document is not a mapping.
    NotAnObject,
    /// `apiVersion` or `kind` is missing (or not a string).
    MissingTypeInfo,
    /// `kind` is not one of the supported kinds (e.g. an `EnvoyFilter`, or a Kubernetes
    /// `Service` in the same file).
    UnsupportedKind,
    /// `apiVersion` is not the kind's group (`networking.istio.io` or
    /// `security.istio.io`) followed by one of [`Kind::versions`].
    UnsupportedApiVersion,
    /// A field the schema does not have, usually a typo.
    UnknownField,
    /// A field has the wrong type or a value out of its type's range, or a required
    /// field is missing.
    InvalidField,
}

/// One document of a file could not be turned into an object.
///
/// Displays as `FILE[:LINE]: document N (KIND NS/NAME): FIELD: MESSAGE`, where `N`
/// is 1-based (`index + 1`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct DocumentError {
    /// File name as given to [`parse_documents`].
    pub file: String,
    /// 0-based position among the file's non-empty documents.
    pub index: usize,
    /// Line of the offending field if known, else of the document's start (1-based).
    pub line: Option<u64>,
    /// `apiVersion` of the document, when readable.
    pub api_version: Option<String>,
    /// `kind` of the document, when readable.
    pub kind: Option<String>,
    /// `metadata.name`, when readable.
    pub name: Option<String>,
    /// `metadata.namespace`, when present.
    pub namespace: Option<String>,
    /// Path of the offending field, e.g. `spec.subsets[0].lables`, when known.
    pub field: Option<String>,
    pub reason: DocumentErrorReason,
    pub message: String,
}

impl fmt::Display for DocumentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": document {}", self.index + 1)?;
        match (&self.kind, &self.name) {
            (Some(kind), Some(name)) => match &self.namespace {
                Some(ns) => write!(f, " ({kind} {ns}/{name})")?,
                None => write!(f, " ({kind} {name})")?,
            },
            (Some(kind), None) => write!(f, " ({kind})")?,
            (None, Some(name)) => write!(f, " ({name})")?,
            (None, None) => {}
        }
        f.write_str(": ")?;
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Either level of parse failure, for callers that want a single error type.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Document(#[from] DocumentError),
}

/// Parses every document of a (multi-document) YAML text.
///
/// `file` names the source in errors. Empty documents (nothing, or only comments,
/// between `---` markers) are skipped and not counted. Accepted `apiVersion`s are
/// `networking.istio.io/v1`, `/v1beta1` and `/v1alpha3` for networking kinds and
/// `security.istio.io/v1` and `/v1beta1` for security kinds.
///
/// Returns `Err` when the text as a whole is not valid YAML; otherwise one entry per
/// document, in order.
pub fn parse_documents(
    file: &str,
    text: &str,
) -> Result<Vec<Result<Document, DocumentError>>, FileError> {
    let options = serde_saphyr::options! { with_snippet: false };
    let roots: Vec<SpannedNode> =
        serde_saphyr::from_multiple_with_options(text, options).map_err(|err| FileError {
            file: file.to_owned(),
            line: err.location().map(|l| l.line()).filter(|l| *l > 0),
            column: err.location().map(|l| l.column()).filter(|c| *c > 0),
            message: yaml_message(&err.to_string()),
        })?;
    Ok(roots
        .into_iter()
        .enumerate()
        .map(|(index, root)| parse_document(file, index, root))
        .collect())
}

/// Parses a YAML text that must hold exactly one document, which must be a valid object.
pub fn parse_single(file: &str, text: &str) -> Result<Document, ParseError> {
    let mut docs = parse_documents(file, text)?;
    let count = docs.len();
    match (docs.pop(), count) {
        (Some(doc), 1) => Ok(doc?),
        _ => Err(FileError {
            file: file.to_owned(),
            line: None,
            column: None,
            message: format!("expected exactly one document, found {count}"),
        }
        .into()),
    }
}

/// Parses one object given as JSON, such as the `request.object` of an admission
/// review. `source` names it in errors; there are no line numbers.
pub fn parse_json(source: &str, value: &serde_json::Value) -> Result<Document, DocumentError> {
    parse_document(source, 0, SpannedNode::from_json(value))
}

/// Error context shared by the checks of one document.
struct Context<'a> {
    file: &'a str,
    index: usize,
    root: &'a SpannedNode,
    api_version: Option<String>,
    kind: Option<String>,
    name: Option<String>,
    namespace: Option<String>,
}

impl Context<'_> {
    fn error(
        &self,
        reason: DocumentErrorReason,
        field: Option<&str>,
        message: impl Into<String>,
    ) -> DocumentError {
        let line = match field {
            Some(field) => self.root.locate(field),
            None => self.root.position,
        };
        DocumentError {
            file: self.file.to_owned(),
            index: self.index,
            line: line.map(|p| p.line),
            api_version: self.api_version.clone(),
            kind: self.kind.clone(),
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            field: field.map(str::to_owned),
            reason,
            message: message.into(),
        }
    }
}

fn parse_document(file: &str, index: usize, root: SpannedNode) -> Result<Document, DocumentError> {
    let metadata = root.get("metadata");
    let ctx = Context {
        file,
        index,
        root: &root,
        api_version: root.get_str("apiVersion").map(str::to_owned),
        kind: root.get_str("kind").map(str::to_owned),
        name: metadata.and_then(|m| m.get_str("name")).map(str::to_owned),
        namespace: metadata
            .and_then(|m| m.get_str("namespace"))
            .filter(|ns| !ns.is_empty())
            .map(str::to_owned),
    };
    let Node::Map(entries) = &root.node else {
        return Err(ctx.error(
            DocumentErrorReason::NotAnObject,
            None,
            "document is not a mapping (expected a Kubernetes object)",
        ));
    };

    let Some(api_version) = root.get_str("apiVersion") else {
        return Err(ctx.error(
            DocumentErrorReason::MissingTypeInfo,
            Some("apiVersion"),
            "missing or non-string `apiVersion`",
        ));
    };
    let Some(kind_name) = root.get_str("kind") else {
        return Err(ctx.error(
            DocumentErrorReason::MissingTypeInfo,
            Some("kind"),
            "missing or non-string `kind`",
        ));
    };
    let Ok(kind) = kind_name.parse::<Kind>() else {
        let supported: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
        return Err(ctx.error(
            DocumentErrorReason::UnsupportedKind,
            Some("kind"),
            format!(
                "unsupported kind `{kind_name}` (apiVersion `{api_version}`); supported kinds: {}",
                supported.join(", ")
            ),
        ));
    };
    let versions = kind.versions();
    let version_ok = api_version
        .split_once('/')
        .is_some_and(|(group, version)| group == kind.group() && versions.contains(&version));
    if !version_ok {
        return Err(ctx.error(
            DocumentErrorReason::UnsupportedApiVersion,
            Some("apiVersion"),
            format!(
                "unsupported apiVersion `{api_version}` for kind {kind}; expected {}/ followed by one of {}",
                kind.group(),
                versions.join(", ")
            ),
        ));
    }
    if let Some((key, _, _)) = entries
        .iter()
        .find(|(key, _, _)| !TOP_LEVEL_KEYS.contains(&key.as_str()))
    {
        return Err(unknown_key(&ctx, "", key, &TOP_LEVEL_KEYS));
    }
    if let Some(Node::Map(meta)) = metadata.map(|m| &m.node)
        && let Some((key, _, _)) = meta
            .iter()
            .find(|(key, _, _)| !METADATA_KEYS.contains(&key.as_str()))
    {
        return Err(unknown_key(&ctx, "metadata.", key, &METADATA_KEYS));
    }

    let object = match kind {
        Kind::ServiceEntry => typed(&ctx).map(IstioObject::ServiceEntry),
        Kind::DestinationRule => typed(&ctx).map(IstioObject::DestinationRule),
        Kind::VirtualService => typed(&ctx).map(IstioObject::VirtualService),
        Kind::Gateway => typed(&ctx).map(IstioObject::Gateway),
        Kind::Sidecar => typed(&ctx).map(IstioObject::Sidecar),
        Kind::WorkloadEntry => typed(&ctx).map(IstioObject::WorkloadEntry),
        Kind::WorkloadGroup => typed(&ctx).map(IstioObject::WorkloadGroup),
        Kind::PeerAuthentication => typed(&ctx).map(IstioObject::PeerAuthentication),
        Kind::AuthorizationPolicy => typed(&ctx).map(IstioObject::AuthorizationPolicy),
        Kind::RequestAuthentication => typed(&ctx).map(IstioObject::RequestAuthentication),
    }?;
    let api_version = api_version.to_owned();
    Ok(Document {
        index,
        line: root.position.map(|p| p.line),
        api_version,
        object,
        tree: root,
    })
}

fn unknown_key(ctx: &Context<'_>, prefix: &str, key: &str, known: &[&str]) -> DocumentError {
    let expected: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
    ctx.error(
        DocumentErrorReason::UnknownField,
        Some(&format!("{prefix}{key}")),
        format!(
            "unknown field `{key}`, expected one of {}",
            expected.join(", ")
        ),
    )
}

/// Deserializes the document into `T`, reporting the path of the first failing field.
fn typed<T: DeserializeOwned>(ctx: &Context<'_>) -> Result<T, DocumentError> {
    serde_path_to_error::deserialize(ctx.root).map_err(|err| {
        let path = path_string(err.path());
        let message = err.inner().to_string();
        let reason = if message.starts_with("unknown field") {
            DocumentErrorReason::UnknownField
        } else {
            DocumentErrorReason::InvalidField
        };
        let field = (!path.is_empty()).then_some(path.as_str());
        ctx.error(reason, field, message)
    })
}

/// Renders a path as `a.b[0].c`.
fn path_string(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    out
}

/// A YAML error message as one line, without the trailing ` at line L, column C`
/// (shown separately) and without hints about parser options.
fn yaml_message(message: &str) -> String {
    let mut text = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let is_number = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    if let Some(at) = text.rfind(" at line ") {
        let located = text[at + " at line ".len()..]
            .split_once(", column ")
            .is_some_and(|(line, column)| is_number(line) && is_number(column));
        if located {
            text.truncate(at);
        }
    }
    text.replace(", set DuplicateKeyPolicy in Options if acceptable", "")
}
