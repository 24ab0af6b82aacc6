//! Debit request bodies: read within limits, then parsed with simd-json into a
//! typed [`DebitRequest`] that keeps the SPEC's distinctions (integer versus
//! float, bool or string; duplicate keys; trailing bytes).
//!
//! Parsing reuses a per-thread input buffer, simd-json scratch buffers and tape,
//! so a request allocates nothing here once the thread is warm.

use std::cell::RefCell;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use simd_json::{Buffers, ErrorType, INPUT_PADDING, Node, StaticNode, Tape};

use super::ApiError;
use crate::ledger::MONTO_MAX;
use crate::server;
use crate::usuario::{Invalid, Usuario};

/// The largest request body, in bytes (SPEC section 1).
pub const BODY_BYTES_MAX: usize = 4096;

/// Most out-of-range numbers one body may hold; each costs one more parse.
const OUT_OF_RANGE_NUMBERS_MAX: usize = 8;

/// A validated debit request.
#[derive(Debug, Clone, Copy)]
pub struct DebitRequest {
    /// The account to debit.
    pub usuario: Usuario,
    /// The amount, 1 ..= [`MONTO_MAX`].
    pub monto: u64,
}

/// Reads the whole body, refusing more than [`BODY_BYTES_MAX`] whether the
/// size is declared (refused before reading) or streamed, and answering 408
/// past the connection's body timeout ([`server::body_deadline`]).
pub async fn read(body: Incoming) -> Result<Bytes, ApiError> {
    if body.size_hint().lower() > BODY_BYTES_MAX as u64 {
        return Err(ApiError::CuerpoDemasiadoGrande);
    }
    match server::body_deadline(collect(body)).await {
        Err(server::BodyTimedOut) => Err(ApiError::TiempoAgotado),
        Ok(collected) => collected,
    }
}

/// Gathers the body's data, refusing more than [`BODY_BYTES_MAX`]. A body in
/// one frame (a small body sent with its head, the usual case) is kept as
/// hyper's buffer: no copy and no allocation; only later frames are joined.
async fn collect(mut body: Incoming) -> Result<Bytes, ApiError> {
    let mut first = Bytes::new();
    let mut joined: Option<BytesMut> = None;
    let mut length = 0;
    while let Some(frame) = body.frame().await {
        // Broken chunked framing or a connection cut mid-body.
        let frame = frame.map_err(|_| ApiError::JsonInvalido)?;
        // Trailers carry nothing the API reads.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        length += data.len();
        if length > BODY_BYTES_MAX {
            return Err(ApiError::CuerpoDemasiadoGrande);
        }
        match &mut joined {
            Some(joined) => joined.extend_from_slice(&data),
            None if first.is_empty() => first = data,
            None => {
                let mut buffer = BytesMut::with_capacity(BODY_BYTES_MAX);
                buffer.extend_from_slice(&first);
                buffer.extend_from_slice(&data);
                joined = Some(buffer);
            }
        }
    }
    Ok(joined.map_or(first, BytesMut::freeze))
}

struct Parser {
    /// The body copied here with simd-json's padding; parsed in place.
    input: Vec<u8>,
    buffers: Buffers,
    /// Kept between parses for its allocation; always empty when stored.
    tape: Option<Tape<'static>>,
}

thread_local! {
    static PARSER: RefCell<Parser> = RefCell::new(Parser {
        input: Vec::with_capacity(BODY_BYTES_MAX + INPUT_PADDING),
        buffers: Buffers::new(BODY_BYTES_MAX),
        tape: None,
    });
}

/// Parses and validates a debit body. The first failing rule of the SPEC's
/// table, top to bottom, decides the error.
pub fn parse_debit(body: &[u8]) -> Result<DebitRequest, ApiError> {
    debug_assert!(body.len() <= BODY_BYTES_MAX);
    PARSER.with(|parser| with_tape(body, &mut parser.borrow_mut(), debit_from_tape))
}

/// Parses `body` and hands its tape to `read`. JSON allows numbers of any
/// size, simd-json does not: a grammatical number it cannot represent is
/// rewritten as a float of the same width (so it can only break `monto`'s
/// rules, or be ignored as an unknown field) and the body parsed again.
fn with_tape<R>(
    body: &[u8],
    parser: &mut Parser,
    read: impl FnOnce(&[Node<'_>]) -> Result<R, ApiError>,
) -> Result<R, ApiError> {
    let mut rewritten = [(0, 0); OUT_OF_RANGE_NUMBERS_MAX];
    let mut rewritten_count = 0;
    loop {
        parser.input.clear();
        parser.input.extend_from_slice(body);
        for &(start, end) in &rewritten[..rewritten_count] {
            parser.input[start..end].fill(b'0');
            parser.input[start + 1] = b'.';
        }
        parser.input.resize(body.len() + INPUT_PADDING, 0);
        let mut tape = parser.tape.take().unwrap_or_else(Tape::null).reset();
        let attempt = simd_json::fill_tape_padded(
            &mut parser.input,
            body.len(),
            &mut parser.buffers,
            &mut tape,
        );
        let error = match attempt {
            Ok(()) => {
                let result = read(&tape.0);
                parser.tape = Some(tape.reset());
                return result;
            }
            Err(error) => error,
        };
        parser.tape = Some(tape.reset());
        let span = match error.error() {
            ErrorType::InvalidNumber => out_of_range_number(body, error.index()),
            _ => None,
        };
        match span {
            Some(span) if rewritten_count < OUT_OF_RANGE_NUMBERS_MAX => {
                rewritten[rewritten_count] = span;
                rewritten_count += 1;
            }
            _ => return Err(ApiError::JsonInvalido),
        }
    }
}

/// The span of the number around `index` when it follows JSON's number grammar
/// and is at least 3 bytes wide (room for `0.0`); `None` for a malformed one.
fn out_of_range_number(body: &[u8], index: usize) -> Option<(usize, usize)> {
    let is_number_byte = |b: &u8| matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E');
    let index = index.min(body.len());
    let start = body[..index]
        .iter()
        .rposition(|b| !is_number_byte(b))
        .map_or(0, |i| i + 1);
    let end = body[start..]
        .iter()
        .position(|b| !is_number_byte(b))
        .map_or(body.len(), |i| start + i);
    let is_grammatical = is_json_number(&body[start..end]);
    (is_grammatical && end - start >= 3).then_some((start, end))
}

/// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
fn is_json_number(text: &[u8]) -> bool {
    let digits = |from: usize| {
        text[from..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count()
    };
    let mut at = usize::from(text.first() == Some(&b'-'));
    match text.get(at) {
        Some(b'0') => at += 1,
        Some(b'1'..=b'9') => at += digits(at),
        _ => return false,
    }
    if text.get(at) == Some(&b'.') {
        let fraction = digits(at + 1);
        if fraction == 0 {
            return false;
        }
        at += 1 + fraction;
    }
    if matches!(text.get(at), Some(b'e' | b'E')) {
        at += 1;
        if matches!(text.get(at), Some(b'+' | b'-')) {
            at += 1;
        }
        let exponent = digits(at);
        if exponent == 0 {
            return false;
        }
        at += exponent;
    }
    at == text.len()
}

/// How many tape nodes the value starting at `nodes[0]` spans.
fn span(node: &Node<'_>) -> usize {
    match node {
        Node::Object { count, .. } | Node::Array { count, .. } => 1 + count,
        Node::String(_) | Node::Static(_) => 1,
    }
}

/// The members of the object at `nodes[0]`, as (key, value's first node index).
fn members<'t, 'i>(nodes: &'t [Node<'i>]) -> impl Iterator<Item = (&'i str, usize)> + 't {
    let len = match nodes.first() {
        Some(Node::Object { len, .. }) => *len,
        _ => 0,
    };
    let mut at = 1;
    (0..len).filter_map(move |_| {
        let key = match nodes.get(at)? {
            Node::String(key) => *key,
            _ => return None,
        };
        let value = at + 1;
        at = value + span(nodes.get(value)?);
        Some((key, value))
    })
}

/// True when some object anywhere in the document repeats a key.
fn has_duplicate_key(nodes: &[Node<'_>]) -> bool {
    nodes.iter().enumerate().any(|(at, node)| match node {
        Node::Object { len, .. } if *len > 1 => {
            let object = &nodes[at..];
            members(object)
                .enumerate()
                .any(|(i, (key, _))| members(object).take(i).any(|(earlier, _)| earlier == key))
        }
        _ => false,
    })
}

fn debit_from_tape(nodes: &[Node<'_>]) -> Result<DebitRequest, ApiError> {
    if !matches!(nodes.first(), Some(Node::Object { .. })) || has_duplicate_key(nodes) {
        return Err(ApiError::JsonInvalido);
    }
    let (mut usuario, mut monto) = (None, None);
    for (key, value) in members(nodes) {
        match key {
            "usuario" => usuario = Some(&nodes[value]),
            "monto" => monto = Some(&nodes[value]),
            _ => {}
        }
    }
    let is_absent =
        |node: Option<&Node<'_>>| matches!(node, None | Some(Node::Static(StaticNode::Null)));
    if is_absent(usuario) || is_absent(monto) || matches!(usuario, Some(Node::String(""))) {
        return Err(ApiError::CamposRequeridos);
    }
    let usuario = match usuario {
        Some(Node::String(name)) => Usuario::new(name),
        _ => Err(Invalid::Empty),
    }
    .map_err(|_| ApiError::UsuarioInvalido)?;
    let monto = match monto {
        Some(Node::Static(StaticNode::U64(monto))) => Some(*monto),
        Some(Node::Static(StaticNode::I64(monto))) => u64::try_from(*monto).ok(),
        _ => None,
    }
    .filter(|monto| (1..=MONTO_MAX).contains(monto))
    .ok_or(ApiError::MontoInvalido)?;
    Ok(DebitRequest { usuario, monto })
}

#[cfg(test)]
mod tests;
