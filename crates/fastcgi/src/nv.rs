//! Name-value pairs (FCGI_PARAMS, GET_VALUES): lengths of 1 byte (< 128) or 4 bytes
//! (high bit set, 31-bit length).

use crate::DecodeError;
use bytes::Bytes;
use nom::Parser;
use nom::bytes::streaming::take;
use nom::number::streaming::{be_u8, be_u32};

/// Largest name or value length the 4-byte form can carry.
pub const MAX_NV_LEN: usize = 0x7fff_ffff;

/// One length: a byte below 128, or four bytes with the high bit of the first set.
fn parse_len(input: &[u8]) -> nom::IResult<&[u8], usize> {
    let (_, first) = be_u8(input)?;
    if first & 0x80 == 0 {
        be_u8.map(usize::from).parse(input)
    } else {
        // u32 -> usize is lossless on every target this crate supports (32/64-bit).
        be_u32.map(|n| (n & 0x7fff_ffff) as usize).parse(input)
    }
}

/// Parse one pair from the front of `input`: `(rest, (name, value))`. nom `Incomplete`
/// when the pair is not all there.
pub fn parse_pair(input: &[u8]) -> nom::IResult<&[u8], (&[u8], &[u8])> {
    let (input, (name_len, value_len)) = (parse_len, parse_len).parse(input)?;
    (take(name_len), take(value_len)).parse(input)
}

fn push_len(out: &mut Vec<u8>, len: usize) {
    assert!(
        len <= MAX_NV_LEN,
        "FastCGI name or value of {len} bytes exceeds the 2^31-1 limit"
    );
    if len < 0x80 {
        out.push(len as u8);
    } else {
        out.extend_from_slice(&(len as u32 | 0x8000_0000).to_be_bytes());
    }
}

/// Append one pair to `out`, choosing 1- or 4-byte lengths as needed.
/// Panics if a name or value is longer than 2^31 - 1 bytes.
pub fn encode_pair(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    push_len(out, name.len());
    push_len(out, value.len());
    out.extend_from_slice(name);
    out.extend_from_slice(value);
}

/// Bytes [`encode_pair`] appends for this pair.
pub fn encoded_pair_len(name: &[u8], value: &[u8]) -> usize {
    let len_len = |n: usize| if n < 0x80 { 1 } else { 4 };
    len_len(name.len()) + len_len(value.len()) + name.len() + value.len()
}

/// Iterator over the pairs of a complete, validated name-value stream.
pub struct NameValueIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for NameValueIter<'a> {
    type Item = (&'a [u8], &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        // The stream was validated by `Params::new`, so this cannot fail; stopping is the
        // safe answer if it ever did.
        match parse_pair(self.rest) {
            Ok((rest, pair)) => {
                self.rest = rest;
                Some(pair)
            }
            Err(_) => {
                self.rest = &[];
                None
            }
        }
    }
}

/// A complete, validated name-value stream (a request's FCGI_PARAMS, or a GET_VALUES
/// body). Holds the raw bytes once; pairs are borrowed slices of it.
///
/// To keep a name or value beyond the borrow without copying, use
/// `params.raw().slice_ref(value)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params {
    raw: Bytes,
}

impl Params {
    /// Validate `raw` as a sequence of whole pairs.
    pub fn new(raw: Bytes) -> Result<Self, DecodeError> {
        let mut rest: &[u8] = &raw;
        while !rest.is_empty() {
            match parse_pair(rest) {
                Ok((r, _)) => rest = r,
                Err(_) => {
                    return Err(DecodeError::BadNameValue(
                        "a name or value length runs past the end of the stream",
                    ));
                }
            }
        }
        Ok(Params { raw })
    }

    /// The pairs in the order sent (duplicates kept).
    pub fn iter(&self) -> NameValueIter<'_> {
        NameValueIter { rest: &self.raw }
    }

    /// The value of the last pair named `name`, if any.
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.iter()
            .filter(|(n, _)| *n == name)
            .last()
            .map(|(_, v)| v)
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

impl<'a> IntoIterator for &'a Params {
    type Item = (&'a [u8], &'a [u8]);
    type IntoIter = NameValueIter<'a>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(name: &[u8], value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_pair(&mut out, name, value);
        assert_eq!(out.len(), encoded_pair_len(name, value));
        out
    }

    #[test]
    fn length_forms_switch_at_128() {
        let v127 = vec![b'x'; 127];
        let v128 = vec![b'y'; 128];
        let e = encoded(b"A", &v127);
        assert_eq!(&e[..2], &[1, 127]);
        let e = encoded(b"A", &v128);
        assert_eq!(&e[..5], &[1, 0x80, 0, 0, 128]);
        let e = encoded(&v128, b"");
        assert_eq!(&e[..5], &[0x80, 0, 0, 128, 0]);
        for (n, v) in [
            (&v127, &v128),
            (&v128, &v127),
            (&v128, &v128),
            (&v127, &v127),
        ] {
            let e = encoded(n, v);
            let (rest, (pn, pv)) = parse_pair(&e).unwrap();
            assert!(rest.is_empty());
            assert_eq!((pn, pv), (&n[..], &v[..]));
        }
    }

    #[test]
    fn long_value_uses_31_bits() {
        let big = vec![7u8; 0x0102_0304];
        let e = encoded(b"BIG", &big);
        assert_eq!(&e[..5], &[3, 0x81, 0x02, 0x03, 0x04]);
        let (_, (n, v)) = parse_pair(&e).unwrap();
        assert_eq!(n, b"BIG");
        assert_eq!(v.len(), big.len());
    }

    #[test]
    fn four_byte_length_ignores_high_bit_and_can_encode_small_values() {
        // Peers may use the 4-byte form for short lengths; that is legal.
        let wire = [0x80, 0, 0, 1, 0x80, 0, 0, 2, b'N', b'v', b'w'];
        let (rest, (n, v)) = parse_pair(&wire).unwrap();
        assert!(rest.is_empty());
        assert_eq!((n, v), (&b"N"[..], &b"vw"[..]));
    }

    #[test]
    fn partial_pairs_are_incomplete() {
        let e = encoded(b"NAME", &[b'v'; 200]);
        for cut in 0..e.len() {
            assert!(
                matches!(parse_pair(&e[..cut]), Err(nom::Err::Incomplete(_))),
                "prefix of {cut} bytes"
            );
        }
    }

    #[test]
    fn params_validate_and_look_up() {
        let mut raw = Vec::new();
        encode_pair(&mut raw, b"A", b"1");
        encode_pair(&mut raw, b"B", b"");
        encode_pair(&mut raw, b"A", b"2");
        let p = Params::new(Bytes::from(raw)).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p.get(b"A"), Some(&b"2"[..]));
        assert_eq!(p.get(b"B"), Some(&b""[..]));
        assert_eq!(p.get(b"C"), None);
        let all: Vec<_> = (&p).into_iter().collect();
        assert_eq!(all[0], (&b"A"[..], &b"1"[..]));
        assert!(Params::new(Bytes::new()).unwrap().is_empty());
    }

    #[test]
    fn lying_lengths_are_rejected() {
        // value length 5 but only 3 bytes follow
        let lying = Bytes::from_static(&[1, 5, b'N', b'a', b'b', b'c']);
        assert!(matches!(
            Params::new(lying),
            Err(DecodeError::BadNameValue(_))
        ));
        // a 4-byte length cut short
        let cut = Bytes::from_static(&[0x80, 0, 0]);
        assert!(matches!(
            Params::new(cut),
            Err(DecodeError::BadNameValue(_))
        ));
        // a huge 4-byte length with nothing behind it
        let huge = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0]);
        assert!(matches!(
            Params::new(huge),
            Err(DecodeError::BadNameValue(_))
        ));
    }
}
