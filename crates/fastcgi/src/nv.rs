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

/// One length at the front of `input`: `(length, bytes it took)`, `None` if cut short.
#[inline(always)]
fn split_len(input: &[u8]) -> Option<(usize, usize)> {
    let first = *input.first()?;
    if first & 0x80 == 0 {
        Some((usize::from(first), 1))
    } else {
        let word: [u8; 4] = input.get(..4)?.try_into().ok()?;
        // u32 -> usize is lossless on every target this crate supports (32/64-bit).
        Some(((u32::from_be_bytes(word) & 0x7fff_ffff) as usize, 4))
    }
}

/// Split one pair off the front of `input`: `(pair, rest)`, `None` when the pair is not
/// all there. The same grammar as [`parse_pair`] without nom's bookkeeping: params are
/// walked several times per request (validation, environ, look-ups), so this is on the
/// hot path of every request.
#[inline]
fn split_pair(input: &[u8]) -> Option<(Pair<'_>, &[u8])> {
    let (name_len, a) = split_len(input)?;
    let (value_len, b) = split_len(&input[a..])?;
    let body = &input[a + b..];
    // Two 31-bit lengths can overflow a 32-bit usize.
    let end = name_len.checked_add(value_len)?;
    if body.len() < end {
        return None;
    }
    let (encoded, rest) = input.split_at(a + b + end);
    Some((
        Pair {
            encoded,
            name_at: a + b,
            name_len,
        },
        rest,
    ))
}

/// One name-value pair as it lies in the stream: the two lengths, the name's bytes, then
/// the value's. Comparing [`Pair::encoded`] with an earlier pair's compares name and
/// value in one go, which is how the worker tells a param unchanged since an earlier
/// request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pair<'a> {
    encoded: &'a [u8],
    name_at: usize,
    name_len: usize,
}

impl<'a> Pair<'a> {
    /// The name.
    #[inline]
    pub fn name(&self) -> &'a [u8] {
        &self.encoded[self.name_at..][..self.name_len]
    }

    /// The value.
    #[inline]
    pub fn value(&self) -> &'a [u8] {
        &self.encoded[self.value_at()..]
    }

    /// The whole pair as encoded: lengths, name, value.
    #[inline]
    pub fn encoded(&self) -> &'a [u8] {
        self.encoded
    }

    /// Where the value starts in [`Pair::encoded`].
    #[inline]
    pub fn value_at(&self) -> usize {
        self.name_at + self.name_len
    }
}

/// `a == b` for the short byte strings of params (names, values), without a call to
/// `memcmp`: [`Params::get`] compares every name of the same length, and the call cost
/// more than the comparison. Public for the worker, which compares params the same way.
#[inline(always)]
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word = |s: &[u8], i: usize| u64::from_ne_bytes(s[i..i + 8].try_into().expect("8 bytes"));
    let half = |s: &[u8], i: usize| u32::from_ne_bytes(s[i..i + 4].try_into().expect("4 bytes"));
    match n {
        0..=3 => a.iter().zip(b).all(|(x, y)| x == y),
        4..=8 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        9..=32 => {
            // Whole words, the last one overlapping its predecessor.
            let mut i = 0;
            while i + 8 < n {
                if word(a, i) != word(b, i) {
                    return false;
                }
                i += 8;
            }
            word(a, n - 8) == word(b, n - 8)
        }
        _ => a == b,
    }
}

/// Iterator over the pairs of a complete, validated name-value stream.
pub struct PairIter<'a> {
    rest: &'a [u8],
}

impl<'a> PairIter<'a> {
    /// The encoded pairs not walked yet.
    #[inline]
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }

    /// Step over the next `n` bytes, which the caller found to be whole pairs (equal to
    /// encoded pairs it saw before). Stepping into the middle of a pair makes the next
    /// pairs misread, never read out of bounds.
    #[inline]
    pub fn advance_bytes(&mut self, n: usize) {
        self.rest = self.rest.get(n..).unwrap_or_default();
    }
}

impl<'a> Iterator for PairIter<'a> {
    type Item = Pair<'a>;
    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        // The stream was validated by `Params::new`, so this cannot fail while bytes
        // remain; stopping is the safe answer if it ever did.
        match split_pair(self.rest) {
            Some((pair, rest)) => {
                self.rest = rest;
                Some(pair)
            }
            None => {
                self.rest = &[];
                None
            }
        }
    }
}

/// Iterator over the `(name, value)` pairs of a complete, validated name-value stream.
pub struct NameValueIter<'a> {
    pairs: PairIter<'a>,
}

impl<'a> Iterator for NameValueIter<'a> {
    type Item = (&'a [u8], &'a [u8]);
    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        self.pairs.next().map(|pair| (pair.name(), pair.value()))
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
            match split_pair(rest) {
                Some((_, r)) => rest = r,
                None => {
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
        NameValueIter {
            pairs: self.pairs(),
        }
    }

    /// The pairs in the order sent, each as it lies in the stream (see [`Pair`]).
    pub fn pairs(&self) -> PairIter<'_> {
        PairIter { rest: &self.raw }
    }

    /// The value of the last pair named `name`, if any.
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        let mut found = None;
        for (n, v) in self.iter() {
            if same_bytes(n, name) {
                found = Some(v);
            }
        }
        found
    }

    /// The values of the last pairs named `names[i]`, in one pass over the pairs (a
    /// caller needing several values saves a walk per extra name).
    pub fn get_each<const N: usize>(&self, names: [&[u8]; N]) -> [Option<&[u8]>; N] {
        let mut found = [None; N];
        for (n, v) in self.iter() {
            for (slot, name) in found.iter_mut().zip(names) {
                if same_bytes(n, name) {
                    *slot = Some(v);
                }
            }
        }
        found
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
            assert_eq!(split_pair(&e[..cut]), None, "prefix of {cut} bytes");
        }
    }

    #[test]
    fn same_bytes_is_equality() {
        let texts: Vec<Vec<u8>> = (0..40)
            .flat_map(|n| {
                let base: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
                let mut variants = vec![base.clone()];
                for at in 0..n {
                    let mut v = base.clone();
                    v[at] ^= 1;
                    variants.push(v);
                }
                variants
            })
            .collect();
        for a in &texts {
            for b in &texts {
                assert_eq!(same_bytes(a, b), a == b, "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn fast_split_agrees_with_the_nom_parser() {
        let mut wire = Vec::new();
        encode_pair(&mut wire, b"A", &[b'x'; 300]);
        encode_pair(&mut wire, &[b'n'; 130], b"");
        encode_pair(&mut wire, b"", b"v");
        wire.extend_from_slice(&[0x80, 0, 0, 1, 0x80, 0, 0, 2, b'N', b'v', b'w', 9]);
        let mut rest = &wire[..];
        while !rest.is_empty() {
            let fast = split_pair(rest);
            let slow = parse_pair(rest).ok();
            assert_eq!(fast.map(|(p, r)| (r, (p.name(), p.value()))), slow);
            if let Some((p, r)) = fast {
                assert_eq!(p.encoded(), &rest[..rest.len() - r.len()]);
                assert_eq!(&p.encoded()[p.value_at()..], p.value());
                assert!(p.encoded()[..p.value_at()].ends_with(p.name()));
            }
            let Some((_, r)) = fast else { break };
            rest = r;
        }
        assert_eq!(rest, &[9]);
        // Lengths whose sum overflows 32 bits are cut short, not wrapped around.
        let huge = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0];
        assert_eq!(split_pair(&huge), None);
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
        assert_eq!(p.get(b""), None);
        assert_eq!(
            p.get_each([b"B", b"A", b"C", b"A"]),
            [Some(&b""[..]), Some(&b"2"[..]), None, Some(&b"2"[..])]
        );
        let all: Vec<_> = (&p).into_iter().collect();
        assert_eq!(all[0], (&b"A"[..], &b"1"[..]));
        assert!(Params::new(Bytes::new()).unwrap().is_empty());
    }

    #[test]
    fn pairs_can_be_stepped_over_as_bytes() {
        let mut raw = Vec::new();
        encode_pair(&mut raw, b"A", b"1");
        encode_pair(&mut raw, b"B", &[b'v'; 200]);
        encode_pair(&mut raw, b"C", b"3");
        let p = Params::new(Bytes::from(raw.clone())).unwrap();
        let mut pairs = p.pairs();
        let first = pairs.next().unwrap();
        assert_eq!(first.encoded(), &raw[..4]);
        let second_len = encoded_pair_len(b"B", &[b'v'; 200]);
        assert_eq!(pairs.rest(), &raw[4..]);
        pairs.advance_bytes(second_len);
        let third = pairs.next().unwrap();
        assert_eq!((third.name(), third.value()), (&b"C"[..], &b"3"[..]));
        assert!(pairs.rest().is_empty() && pairs.next().is_none());
        // Stepping past the end stops the walk.
        let mut pairs = p.pairs();
        pairs.advance_bytes(raw.len() + 1);
        assert!(pairs.next().is_none());
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
