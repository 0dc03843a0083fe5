//! Name-value pairs (FCGI_PARAMS, GET_VALUES): lengths of 1 byte (< 128) or 4 bytes
//! (high bit set, 31-bit length).

use crate::DecodeError;
use bytes::Bytes;

/// Parse one pair from the front of `input`: `(rest, (name, value))`. nom `Incomplete`
/// when the pair is not all there.
pub fn parse_pair(input: &[u8]) -> nom::IResult<&[u8], (&[u8], &[u8])> {
    todo!("{}", input.len())
}

/// Append one pair to `out`, choosing 1- or 4-byte lengths as needed.
/// Panics if a name or value is longer than 2^31 - 1 bytes.
pub fn encode_pair(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    todo!("{} {} {}", out.len(), name.len(), value.len())
}

/// Iterator over the pairs of a complete, validated name-value stream.
pub struct NameValueIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for NameValueIter<'a> {
    type Item = (&'a [u8], &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        todo!("{}", self.rest.len())
    }
}

/// A complete, validated name-value stream (a request's FCGI_PARAMS, or a GET_VALUES
/// body). Holds the raw bytes once; pairs are borrowed slices of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params {
    raw: Bytes,
}

impl Params {
    /// Validate `raw` as a sequence of whole pairs.
    pub fn new(raw: Bytes) -> Result<Self, DecodeError> {
        todo!("{}", raw.len())
    }

    /// The pairs in the order sent (duplicates kept).
    pub fn iter(&self) -> NameValueIter<'_> {
        NameValueIter { rest: &self.raw }
    }

    /// The value of the last pair named `name`, if any.
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        todo!("{}", name.len())
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// True when there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The encoded bytes.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }
}
