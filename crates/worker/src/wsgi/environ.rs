//! The PEP 3333 `environ` of a request, built from its FastCGI params.
//!
//! Every param becomes a native str (its bytes decoded as latin-1), except: HTTP_PROXY
//! is dropped (httpoxy), empty CONTENT_LENGTH / CONTENT_TYPE are dropped (a non-numeric
//! CONTENT_LENGTH too), HTTP_CONTENT_LENGTH / HTTP_CONTENT_TYPE are not passed (CGI
//! forbids them; they only fill in a missing CONTENT_*), and SCRIPT_NAME / PATH_INFO are
//! recomputed from the full path and the pool's mount point (see [`crate::http`]).
//! REQUEST_METHOD, SERVER_NAME, SERVER_PORT, SERVER_PROTOCOL and QUERY_STRING always
//! exist, so `wsgiref.validate` accepts the environ even from a minimal client.
//!
//! Building the environ was most of the server's own work per request, so objects are
//! reused across requests (see `Cache`): each param name becomes an interned str once
//! (which also makes the app's `environ['PATH_INFO']` a pointer comparison); each name
//! remembers its last short value, reused while the value stays the same (most CGI
//! variables and request headers repeat from one request to the next); and the environ
//! itself starts as a copy of a template dict when the request's params have the same
//! names in the same order as an earlier request's: each param is then compared with
//! the template's as encoded bytes, and only the items whose value changed are set (see
//! `Template`). Strs are immutable and each request gets its own dict, so none of this
//! is visible to apps (tests/wire.rs `environ_depends_on_the_request_alone`).

use crate::http;
use fastcgi::same_bytes;
use fastcgi::{Params, Role};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyDict, PyString, PyTuple, PyType};
use std::borrow::Cow;
use std::cell::RefCell;
use std::mem::ManuallyDrop;

/// What the driver needs to know about a request besides the environ.
#[derive(Debug)]
pub struct RequestInfo<'p> {
    /// REQUEST_METHOD, escaped for log lines (see `http::log_safe`).
    pub method: Cow<'p, str>,
    /// REQUEST_URI (or the path and query), escaped for log lines.
    pub uri: Cow<'p, str>,
    /// REMOTE_ADDR, when given and not empty.
    pub client: Option<&'p [u8]>,
    /// CONTENT_LENGTH, when present and valid: the most `wsgi.input` returns.
    pub content_length: Option<u64>,
}

impl RequestInfo<'_> {
    /// A HEAD request: the body is not sent.
    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }
}

/// A native str holding `bytes` decoded as latin-1 (PEP 3333 "bytes in a str").
pub fn latin1<'py>(py: Python<'py>, bytes: &[u8]) -> Bound<'py, PyString> {
    // Latin-1 maps each byte to the code point of the same value, so this is exactly
    // PEP 3333's decoding, and CPython does it with a scan and a memcpy (about a third
    // of what the UTF-8 decoder costs for the same ASCII text).
    let len = ffi::Py_ssize_t::try_from(bytes.len()).expect("a slice is shorter than isize::MAX");
    // SAFETY: `bytes` is valid for `len` bytes; latin-1 decoding accepts any bytes, so
    // the only failure is MemoryError, where from_owned_ptr panics as PyString::new does.
    unsafe {
        let ptr = ffi::PyUnicode_DecodeLatin1(bytes.as_ptr().cast(), len, std::ptr::null());
        Bound::from_owned_ptr(py, ptr).cast_into_unchecked()
    }
}

/// The objects a request's environ refers to, made by the driver.
pub struct Streams<'a, 'py> {
    /// `wsgi.input`.
    pub input: &'a Bound<'py, PyAny>,
    /// `fcgi.data`, for the filter role only.
    pub data: Option<&'a Bound<'py, PyAny>>,
    /// `wsgi.errors`.
    pub errors: &'a Bound<'py, PyAny>,
    /// `wsgi.file_wrapper`.
    pub file_wrapper: &'a Bound<'py, PyType>,
}

/// How [`build`] treats a param, decided once per cached name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Copied into the environ as it is (a repeated `HTTP_*` one is joined to the first).
    Plain,
    /// HTTP_PROXY: never passed (httpoxy).
    Dropped,
    // Read by `build` and not copied as they are.
    ScriptName,
    PathInfo,
    ContentLength,
    ContentType,
    HttpContentLength,
    HttpContentType,
    // The rest are copied too, and also read by `build`.
    DocumentUri,
    RequestUri,
    Https,
    RequestScheme,
    RequestMethod,
    QueryString,
    HttpHost,
    ServerName,
    ServerPort,
    ServerProtocol,
    RemoteAddr,
}

impl Kind {
    /// Whether [`derive`] reads the param's value (it reads the others' presence at
    /// most, which the params' names already tell).
    fn read_by_derive(self) -> bool {
        matches!(
            self,
            Kind::ScriptName
                | Kind::PathInfo
                | Kind::ContentLength
                | Kind::ContentType
                | Kind::HttpContentLength
                | Kind::HttpContentType
                | Kind::DocumentUri
                | Kind::RequestUri
                | Kind::Https
                | Kind::RequestScheme
                | Kind::RequestMethod
                | Kind::HttpHost
        )
    }

    /// Whether the param becomes an environ item of its own name.
    fn copied(self) -> bool {
        !matches!(
            self,
            Kind::Dropped
                | Kind::ScriptName
                | Kind::PathInfo
                | Kind::ContentLength
                | Kind::ContentType
                | Kind::HttpContentLength
                | Kind::HttpContentType
        )
    }

    fn of(name: &[u8]) -> Kind {
        match name {
            b"HTTP_PROXY" => Kind::Dropped,
            b"SCRIPT_NAME" => Kind::ScriptName,
            b"PATH_INFO" => Kind::PathInfo,
            b"CONTENT_LENGTH" => Kind::ContentLength,
            b"CONTENT_TYPE" => Kind::ContentType,
            b"HTTP_CONTENT_LENGTH" => Kind::HttpContentLength,
            b"HTTP_CONTENT_TYPE" => Kind::HttpContentType,
            b"DOCUMENT_URI" => Kind::DocumentUri,
            b"REQUEST_URI" => Kind::RequestUri,
            b"HTTPS" => Kind::Https,
            b"REQUEST_SCHEME" => Kind::RequestScheme,
            b"REQUEST_METHOD" => Kind::RequestMethod,
            b"QUERY_STRING" => Kind::QueryString,
            b"HTTP_HOST" => Kind::HttpHost,
            b"SERVER_NAME" => Kind::ServerName,
            b"SERVER_PORT" => Kind::ServerPort,
            b"SERVER_PROTOCOL" => Kind::ServerProtocol,
            b"REMOTE_ADDR" => Kind::RemoteAddr,
            _ => Kind::Plain,
        }
    }
}

/// Names put in the cache when it is made, so that a client sending many made-up
/// header names (which fill the cache) cannot push the usual ones out: the CGI
/// variables of nginx's `fastcgi_params` and Apache's mod_proxy_fcgi, those [`build`]
/// sets itself, and common request headers.
const PRESET_NAMES: &[&[u8]] = &[
    b"QUERY_STRING",
    b"REQUEST_METHOD",
    b"CONTENT_TYPE",
    b"CONTENT_LENGTH",
    b"SCRIPT_NAME",
    b"PATH_INFO",
    b"REQUEST_URI",
    b"DOCUMENT_URI",
    b"DOCUMENT_ROOT",
    b"SERVER_PROTOCOL",
    b"REQUEST_SCHEME",
    b"HTTPS",
    b"GATEWAY_INTERFACE",
    b"SERVER_SOFTWARE",
    b"REMOTE_ADDR",
    b"REMOTE_PORT",
    b"REMOTE_USER",
    b"SERVER_ADDR",
    b"SERVER_PORT",
    b"SERVER_NAME",
    b"REDIRECT_STATUS",
    b"SCRIPT_FILENAME",
    b"PATH_TRANSLATED",
    b"AUTH_TYPE",
    b"CONTEXT_DOCUMENT_ROOT",
    b"CONTEXT_PREFIX",
    b"SERVER_ADMIN",
    b"SERVER_SIGNATURE",
    b"HTTP_HOST",
    b"HTTP_CONNECTION",
    b"HTTP_USER_AGENT",
    b"HTTP_ACCEPT",
    b"HTTP_ACCEPT_ENCODING",
    b"HTTP_ACCEPT_LANGUAGE",
    b"HTTP_CACHE_CONTROL",
    b"HTTP_COOKIE",
    b"HTTP_AUTHORIZATION",
    b"HTTP_REFERER",
    b"HTTP_ORIGIN",
    b"HTTP_IF_NONE_MATCH",
    b"HTTP_IF_MODIFIED_SINCE",
    b"HTTP_UPGRADE_INSECURE_REQUESTS",
    b"HTTP_SEC_FETCH_DEST",
    b"HTTP_SEC_FETCH_MODE",
    b"HTTP_SEC_FETCH_SITE",
    b"HTTP_SEC_FETCH_USER",
    b"HTTP_X_FORWARDED_FOR",
    b"HTTP_X_FORWARDED_PROTO",
    b"HTTP_X_REAL_IP",
    b"HTTP_X_REQUESTED_WITH",
];

/// Positions in [`PRESET_NAMES`], hence cache entries, of the names `build` sets itself:
/// found without hashing.
const CONTENT_TYPE: usize = 2;
const CONTENT_LENGTH: usize = 3;
const SCRIPT_NAME: usize = 4;
const PATH_INFO: usize = 5;
const SERVER_NAME: usize = 19;
const _: () = {
    assert!(matches!(PRESET_NAMES[CONTENT_TYPE], b"CONTENT_TYPE"));
    assert!(matches!(PRESET_NAMES[CONTENT_LENGTH], b"CONTENT_LENGTH"));
    assert!(matches!(PRESET_NAMES[SCRIPT_NAME], b"SCRIPT_NAME"));
    assert!(matches!(PRESET_NAMES[PATH_INFO], b"PATH_INFO"));
    assert!(matches!(PRESET_NAMES[SERVER_NAME], b"SERVER_NAME"));
};

/// Most names the cache holds: a bound on its memory whatever clients send.
const MAX_NAMES: usize = 128;
/// Slots of the cache's hash table: twice [`MAX_NAMES`], so probes stay short.
const SLOTS: usize = 2 * MAX_NAMES;
/// Longer names are not cached (real ones are far shorter).
const MAX_NAME_LEN: usize = 64;
/// Longer values are not remembered: long ones (cookies, long query strings) rarely
/// repeat, and this bounds the cache's memory.
const MAX_VALUE_LEN: usize = 128;
/// Environ shapes (key sequences) kept as templates: a site whose requests come in a
/// few shapes (with and without a cookie, say) does not rebuild templates in turn.
const MAX_TEMPLATES: usize = 4;
/// In [`Cache::last_names`]: the param at that position was not cached.
const NOT_CACHED: u8 = u8::MAX;

/// One cached param name.
struct Entry {
    /// The name's bytes.
    name: Box<[u8]>,
    /// The name as an interned str.
    key: Py<PyString>,
    /// How `build` treats it.
    kind: Kind,
    /// Whether values are remembered: not for credentials, which should not outlive
    /// their request in the worker's memory (nor would they repeat across clients).
    remember: bool,
    /// The last value remembered, and its str.
    value: Option<(Vec<u8>, Py<PyString>)>,
    /// Where the entry's item is in the build numbered `.0` (see [`Cache::builds`]):
    /// a repeated header is found without a dict look-up or a per-build table.
    listed: (u64, u32),
}

/// An environ kept to be copied, with the params it was made from. `PyDict_Copy` clones
/// a dict's hash table in one go, several times cheaper than inserting its ~40 items
/// one by one (hashing, probing, three resizes). A request whose params have the same
/// names in the same order (its *shape*) starts from a copy: each param is compared
/// with the template's as raw bytes, name and value at once, and only the items whose
/// value differs are set; the items derived after the params are compared by address.
struct Template {
    /// Per param, in order.
    params: Vec<ShapeParam>,
    /// Per param its whole encoded pair when its value is kept
    /// ([`ShapeParam::value_kept`]), else its name: what the next requests' params are
    /// compared with.
    bytes: Vec<u8>,
    /// The keys of the items derived after the params ([`derive`]), in order. Borrowed:
    /// each is a cache entry's key or an `intern!` str, both alive for the process's
    /// life; compared by address only.
    derived_keys: Vec<*mut ffi::PyObject>,
    /// Their values when the template was made (`None` for per-request objects and
    /// values not to be kept). Borrowed from `dict`; compared by address.
    derived_values: Vec<*mut ffi::PyObject>,
    /// The role of the request it was made from.
    role: Role,
    /// Whether it was made with an `fcgi.data` (a filter request).
    has_data: bool,
    /// Every derived item but the request's own objects (`wsgi.input`, `wsgi.errors`,
    /// `fcgi.data`) is kept in the dict: a request whose params read by [`derive`] are
    /// all unchanged, of the same role, needs only those three set.
    derived_kept: bool,
    /// The environ itself, never handed out (only copies are).
    dict: Py<PyDict>,
}

/// One param of a [`Template`]'s shape.
struct ShapeParam {
    /// The name's cache entry, whose key the item has.
    entry: u8,
    kind: Kind,
    /// [`Template::bytes`] holds the whole encoded pair, not just the name, and (for a
    /// param that is an item of its own) the dict holds its value's str: a param whose
    /// encoded pair is unchanged needs no decoding and nothing set. Not for values the
    /// cache does not remember (credentials, long ones): their item is set on every
    /// request.
    value_kept: bool,
    name_len: u32,
    /// Where the value starts in the encoded pair (`value_kept`).
    value_at: u32,
    /// Where its bytes are in [`Template::bytes`].
    start: u32,
    len: u32,
}

impl Template {
    /// Walk `params` along this template's shape. `None` as soon as a name differs (or
    /// the number of params). Otherwise `seen` holds what the params say, `changed`
    /// the params whose item the copy must set, `(entry, value)`, and the flag says
    /// whether every param [`derive`] reads is the same as the template's.
    #[inline]
    fn walk<'p>(
        &self,
        params: &'p Params,
        seen: &mut Seen<'p>,
        changed: &mut Vec<(u8, &'p [u8])>,
    ) -> Option<bool> {
        let mut same_read = true;
        let mut pairs = params.pairs();
        for shape in &self.params {
            let kept = &self.bytes[shape.start as usize..][..shape.len as usize];
            let name = if shape.value_kept {
                // The usual case: the same pair, byte for byte, as when the template
                // was made.
                let rest = pairs.rest();
                if let Some(same) = rest.get(..kept.len())
                    && same_bytes(same, kept)
                {
                    if shape.kind != Kind::Plain {
                        seen.note(shape.kind, &same[shape.value_at as usize..]);
                    }
                    pairs.advance_bytes(kept.len());
                    continue;
                }
                &kept[shape.value_at as usize - shape.name_len as usize..shape.value_at as usize]
            } else {
                kept
            };
            let pair = pairs.next()?;
            if !same_bytes(pair.name(), name) {
                return None;
            }
            if shape.kind.copied() {
                changed.push((shape.entry, pair.value()));
            }
            same_read &= !shape.kind.read_by_derive();
            seen.note(shape.kind, pair.value());
        }
        pairs.rest().is_empty().then_some(same_read)
    }

    /// Whether a request of `role`, whose params [`derive`] reads are the same as this
    /// template's, has the same derived items but for its own objects.
    fn derives_the_same(&self, role: Role, streams: &Streams<'_, '_>) -> bool {
        self.derived_kept && self.role == role && self.has_data == streams.data.is_some()
    }
}

/// The derived items of a request whose params have a template's shape.
enum Derived<'a, 'b, 'py> {
    /// As [`derive`] made them, to be compared with the template's.
    Items(&'a [Item<'b, 'py>]),
    /// The template's ([`Template::derives_the_same`]) but for the request's own
    /// objects, which these streams hold.
    Same(&'a Streams<'b, 'py>),
}

/// The str objects reused from one request to the next: per name an interned key and
/// its last value, plus a few environ templates. Bounded ([`MAX_NAMES`],
/// [`MAX_NAME_LEN`], [`MAX_VALUE_LEN`], [`MAX_TEMPLATES`]); names beyond the bound
/// simply get fresh strs every time.
struct Cache {
    /// Open addressing, linear probing: an index into `entries` plus one, 0 = free.
    slots: [u8; SLOTS],
    entries: Vec<Entry>,
    /// The entry of each param of the previous request, by position: requests from one
    /// web server send their params in the same order, so comparing the name with the
    /// entry at its position is usually the whole lookup.
    last_names: Vec<u8>,
    templates: Vec<Template>,
    /// Which template the next new one replaces once there are [`MAX_TEMPLATES`].
    next_template: usize,
    /// The template the last request matched: tried first.
    last_template: usize,
    /// Environs built so far: numbers each build for [`Entry::listed`].
    builds: u64,
}

/// A cheap hash of a name. Not keyed: the table is bounded, so colliding names can
/// only lengthen probes up to [`MAX_NAMES`], and only until the table is full.
fn name_hash(name: &[u8]) -> usize {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = name.len() as u64;
    let mut words = name.chunks_exact(8);
    for word in &mut words {
        let w = u64::from_le_bytes(word.try_into().expect("8 bytes"));
        h = (h ^ w).wrapping_mul(K).rotate_left(29);
    }
    let mut tail = 0u64;
    for (i, &b) in words.remainder().iter().enumerate() {
        tail |= u64::from(b) << (8 * i);
    }
    h = (h ^ tail).wrapping_mul(K);
    (h >> 40) as usize
}

impl Cache {
    const fn new() -> Cache {
        Cache {
            slots: [0; SLOTS],
            entries: Vec::new(),
            last_names: Vec::new(),
            templates: Vec::new(),
            next_template: 0,
            last_template: 0,
            builds: 0,
        }
    }

    /// The entry for `name`, created if there is room; `None` when it cannot be cached.
    fn entry(&mut self, py: Python<'_>, name: &[u8]) -> Option<usize> {
        self.preset(py);
        self.find_or_add(py, name)
    }

    /// Fill a new cache with [`PRESET_NAMES`], in order: entry `i` is `PRESET_NAMES[i]`.
    fn preset(&mut self, py: Python<'_>) {
        if self.entries.is_empty() {
            self.entries.reserve_exact(MAX_NAMES);
            for preset in PRESET_NAMES {
                self.find_or_add(py, preset);
            }
        }
    }

    /// [`Cache::entry`] for the param at `position`, trying the previous request's
    /// name at that position first.
    fn entry_at(&mut self, py: Python<'_>, position: usize, name: &[u8]) -> Option<usize> {
        if let Some(&last) = self.last_names.get(position) {
            if last != NOT_CACHED && same_bytes(&self.entries[usize::from(last)].name, name) {
                return Some(usize::from(last));
            }
        }
        let index = self.entry(py, name);
        // Entries number at most MAX_NAMES (128): an index fits a u8 below NOT_CACHED.
        let code = index.map_or(NOT_CACHED, |i| i as u8);
        match self.last_names.get_mut(position) {
            Some(last) => *last = code,
            None => self.last_names.push(code),
        }
        index
    }

    fn find_or_add(&mut self, py: Python<'_>, name: &[u8]) -> Option<usize> {
        let mut slot = name_hash(name) % SLOTS;
        loop {
            match self.slots[slot] {
                0 => break,
                n => {
                    let index = usize::from(n) - 1;
                    if same_bytes(&self.entries[index].name, name) {
                        return Some(index);
                    }
                }
            }
            slot = (slot + 1) % SLOTS;
        }
        if self.entries.len() >= MAX_NAMES || name.len() > MAX_NAME_LEN {
            return None;
        }
        let mut key = latin1(py, name).into_ptr();
        // SAFETY: `key` is an owned reference to an exact str; InternInPlace replaces it
        // with the interned one, keeping the reference owned.
        let key = unsafe {
            ffi::PyUnicode_InternInPlace(&mut key);
            Bound::from_owned_ptr(py, key).cast_into_unchecked::<PyString>()
        };
        self.entries.push(Entry {
            name: name.into(),
            key: key.unbind(),
            kind: Kind::of(name),
            remember: !matches!(
                name,
                b"HTTP_AUTHORIZATION" | b"HTTP_PROXY_AUTHORIZATION" | b"HTTP_COOKIE"
            ),
            value: None,
            listed: (0, 0),
        });
        // At most MAX_NAMES (128) entries: the index plus one fits a u8.
        self.slots[slot] = self.entries.len() as u8;
        Some(self.entries.len() - 1)
    }

    /// The str for the value `bytes` of entry `index`: the remembered one if the
    /// value is unchanged, else a new one (remembered if short enough). The flag says
    /// whether the str is the remembered one, which a template may keep.
    #[inline(always)]
    fn value<'py>(
        &mut self,
        py: Python<'py>,
        index: usize,
        bytes: &[u8],
    ) -> (Bound<'py, PyString>, bool) {
        if let Some((last, text)) = &self.entries[index].value {
            if same_bytes(last, bytes) {
                return (text.bind(py).clone(), true);
            }
        }
        self.new_value(py, index, bytes)
    }

    /// Whether entry `index` remembers the value `bytes` (and a template may keep it).
    fn remembers(&self, index: usize, bytes: &[u8]) -> bool {
        self.entries[index].remember && bytes.len() <= MAX_VALUE_LEN
    }

    /// [`Cache::value`] for a value that is not the remembered one: kept out of line,
    /// so that the usual case, inlined, is a comparison.
    #[inline(never)]
    fn new_value<'py>(
        &mut self,
        py: Python<'py>,
        index: usize,
        bytes: &[u8],
    ) -> (Bound<'py, PyString>, bool) {
        let text = latin1(py, bytes);
        if !self.remembers(index, bytes) {
            return (text, false);
        }
        let entry = &mut self.entries[index];
        match &mut entry.value {
            Some((last, old)) => {
                last.clear();
                last.extend_from_slice(bytes);
                *old = text.clone().unbind();
            }
            None => entry.value = Some((bytes.to_vec(), text.clone().unbind())),
        }
        (text, true)
    }

    /// The item `PRESET_NAMES[preset]` = `value`, for names `build` sets itself.
    fn item<'py>(&mut self, py: Python<'py>, preset: usize, value: &[u8]) -> Item<'static, 'py> {
        self.preset(py);
        let (value, shareable) = self.value(py, preset, value);
        Item {
            key: Key::Cached(self.entries[preset].key.as_ptr()),
            value: value.into_any(),
            shareable,
            own: false,
        }
    }

    /// Whether `derived` (what [`derive`] made) has the keys of template `index`'s.
    fn derived_fit(&self, index: usize, derived: &[Item<'_, '_>]) -> bool {
        let keys = &self.templates[index].derived_keys;
        keys.len() == derived.len()
            && keys
                .iter()
                .zip(derived)
                .all(|(k, item)| item.key.cached() == Some(*k))
    }

    /// A copy of template `index`, for a request whose params have its shape, with the
    /// `changed` params set and the derived items that differ.
    fn copy_template<'py>(
        &mut self,
        py: Python<'py>,
        index: usize,
        changed: &[(u8, &[u8])],
        derived: Derived<'_, '_, 'py>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let template = &self.templates[index];
        // SAFETY: a valid dict; PyDict_Copy returns a new reference or NULL with an
        // exception set.
        let environ = unsafe {
            Bound::from_owned_ptr_or_err(py, ffi::PyDict_Copy(template.dict.as_ptr()))?
                .cast_into_unchecked::<PyDict>()
        };
        // The template has no repeated key (see `keep_template`), so each param and
        // each derived item is its own key and the order of these updates does not
        // matter.
        match derived {
            Derived::Items(items) => {
                for ((key, was), item) in template
                    .derived_keys
                    .iter()
                    .zip(&template.derived_values)
                    .zip(items)
                {
                    if item.value.as_ptr() != *was {
                        set_raw(&environ, *key, &item.value)?;
                    }
                }
            }
            Derived::Same(streams) => {
                for (key, value) in own_objects(py, streams) {
                    set_raw(&environ, key.as_ptr(), value)?;
                }
            }
        }
        for &(entry, value) in changed {
            let (text, _) = self.value(py, usize::from(entry), value);
            set_raw(
                &environ,
                self.entries[usize::from(entry)].key.as_ptr(),
                &text,
            )?;
        }
        self.last_template = index;
        Ok(environ)
    }

    /// Keep `environ`, built from `params` as `items` (the params' own, then `derived`
    /// ones), as a template if it can be one: every name cached (the cache's
    /// `last_names` now holds their entries), no header joined, and no key repeated (so
    /// that each param and derived item is one key).
    fn keep_template(
        &mut self,
        py: Python<'_>,
        params: &Params,
        environ: &Bound<'_, PyDict>,
        items: &[Item<'_, '_>],
        derived: usize,
        role: Role,
    ) -> PyResult<()> {
        if environ.len() != items.len() {
            return Ok(());
        }
        let (param_items, derived) = items.split_at(items.len() - derived);
        let mut param_items = param_items.iter();
        let mut shape = Vec::new();
        let mut bytes = Vec::new();
        for (pair, &entry) in params.pairs().zip(&self.last_names) {
            if entry == NOT_CACHED {
                return Ok(());
            }
            let kind = self.entries[usize::from(entry)].kind;
            let value_kept = if kind.copied() {
                match param_items.next() {
                    Some(item)
                        if item.key.cached()
                            == Some(self.entries[usize::from(entry)].key.as_ptr()) =>
                    {
                        item.shareable
                    }
                    // A joined header, or an item that is not this param's.
                    _ => return Ok(()),
                }
            } else {
                // Read by `derive` only: kept when the cache would remember it.
                self.remembers(usize::from(entry), pair.value())
            };
            let kept = if value_kept {
                pair.encoded()
            } else {
                pair.name()
            };
            // Offsets and lengths within a params block, which request_params_max keeps
            // far below 2^32 bytes.
            shape.push(ShapeParam {
                entry,
                kind,
                value_kept,
                name_len: pair.name().len() as u32,
                value_at: pair.value_at() as u32,
                start: bytes.len() as u32,
                len: kept.len() as u32,
            });
            bytes.extend_from_slice(kept);
        }
        if shape.len() != params.len() || param_items.next().is_some() {
            return Ok(());
        }
        let mut derived_keys = Vec::with_capacity(derived.len());
        for item in derived {
            match item.key.cached() {
                Some(key) => derived_keys.push(key),
                None => return Ok(()),
            }
        }
        // SAFETY: as in `copy_template`.
        let dict = unsafe {
            Bound::from_owned_ptr_or_err(py, ffi::PyDict_Copy(environ.as_ptr()))?
                .cast_into_unchecked::<PyDict>()
        };
        // Per-request objects (wsgi.input...) must not be kept alive by the template,
        // nor credentials outlive their request.
        let none = py.None().into_bound(py);
        for shape in shape.iter().filter(|p| p.kind.copied() && !p.value_kept) {
            set_raw(
                &dict,
                self.entries[usize::from(shape.entry)].key.as_ptr(),
                &none,
            )?;
        }
        let mut derived_values = Vec::with_capacity(derived.len());
        let mut derived_kept = true;
        for (key, item) in derived_keys.iter().zip(derived) {
            if item.shareable {
                derived_values.push(item.value.as_ptr());
            } else {
                derived_kept &= item.own;
                set_raw(&dict, *key, &none)?;
                derived_values.push(none.as_ptr());
            }
        }
        let has_data = derived_keys.contains(&intern!(py, "fcgi.data").as_ptr());
        let template = Template {
            params: shape,
            bytes,
            derived_keys,
            derived_values,
            role,
            has_data,
            derived_kept,
            dict: dict.unbind(),
        };
        if self.templates.len() < MAX_TEMPLATES {
            self.last_template = self.templates.len();
            self.templates.push(template);
        } else {
            self.last_template = self.next_template;
            self.templates[self.next_template] = template;
            self.next_template = (self.next_template + 1) % MAX_TEMPLATES;
        }
        Ok(())
    }
}

thread_local! {
    /// The worker's cache. Only its serving thread builds environs; ManuallyDrop: never
    /// dropped, so no str is released after the interpreter has finalized at exit.
    static CACHE: ManuallyDrop<RefCell<Cache>> =
        const { ManuallyDrop::new(RefCell::new(Cache::new())) };
}

/// A key of the environ being built.
enum Key<'a, 'py> {
    /// A cache entry's key or an `intern!` str: both live as long as the process, so
    /// the pointer is borrowed without a reference count.
    Cached(*mut ffi::PyObject),
    /// A name the cache could not take, and its bytes.
    Owned(Bound<'py, PyString>, &'a [u8]),
}

impl Key<'_, '_> {
    fn cached(&self) -> Option<*mut ffi::PyObject> {
        match self {
            Key::Cached(key) => Some(*key),
            Key::Owned(..) => None,
        }
    }
}

/// One `environ[key] = value`, in the order they are applied.
struct Item<'a, 'py> {
    key: Key<'a, 'py>,
    value: Bound<'py, PyAny>,
    /// The value may be kept by a template: a remembered str or a constant.
    shareable: bool,
    /// One of the request's own objects (see [`own_objects`]).
    own: bool,
}

impl<'py> Item<'_, 'py> {
    /// An item whose key is an `intern!` str.
    fn fixed(key: &Bound<'py, PyString>, value: &Bound<'py, PyAny>, shareable: bool) -> Self {
        Item {
            key: Key::Cached(key.as_ptr()),
            value: value.clone(),
            shareable,
            own: false,
        }
    }

    /// An item holding one of the request's own objects (see [`own_objects`]).
    fn own_object(key: &Bound<'py, PyString>, value: &Bound<'py, PyAny>) -> Self {
        Item {
            own: true,
            ..Item::fixed(key, value, false)
        }
    }
}

/// `environ[key] = value` (PyDict_SetItem takes its own references).
fn set_raw(
    environ: &Bound<'_, PyDict>,
    key: *mut ffi::PyObject,
    value: &Bound<'_, PyAny>,
) -> PyResult<()> {
    // SAFETY: a dict, a live key (see `Key::Cached`) and a live value.
    if unsafe { ffi::PyDict_SetItem(environ.as_ptr(), key, value.as_ptr()) } == 0 {
        Ok(())
    } else {
        Err(PyErr::fetch(environ.py()))
    }
}

/// Build the environ for `params`.
pub fn build<'py, 'p>(
    py: Python<'py>,
    params: &'p Params,
    role: Role,
    mount: &str,
    streams: Streams<'_, 'py>,
) -> PyResult<(Bound<'py, PyDict>, RequestInfo<'p>)> {
    CACHE.with(|cache| match cache.try_borrow_mut() {
        Ok(mut cache) => build_with(py, &mut cache, params, role, mount, streams),
        // Only if building re-entered itself (nothing does): an empty cache is correct,
        // just slower.
        Err(_) => build_with(py, &mut Cache::new(), params, role, mount, streams),
    })
}

/// What the params say that `build` reads besides copying them: the values the derived
/// items and the [`RequestInfo`] come from.
#[derive(Default)]
struct Seen<'p> {
    script_name: Option<&'p [u8]>,
    path_info: Option<&'p [u8]>,
    document_uri: Option<&'p [u8]>,
    request_uri: Option<&'p [u8]>,
    https: Option<&'p [u8]>,
    request_scheme: Option<&'p [u8]>,
    content_length: Option<&'p [u8]>,
    content_type: Option<&'p [u8]>,
    http_content_length: Option<&'p [u8]>,
    http_content_type: Option<&'p [u8]>,
    method: Option<&'p [u8]>,
    query_string: Option<&'p [u8]>,
    http_host: Option<&'p [u8]>,
    remote_addr: Option<&'p [u8]>,
    has_server_name: bool,
    has_server_port: bool,
    has_server_protocol: bool,
}

impl<'p> Seen<'p> {
    /// A param of this kind has this value (a later one wins).
    #[inline]
    fn note(&mut self, kind: Kind, value: &'p [u8]) {
        match kind {
            Kind::Plain | Kind::Dropped => {}
            Kind::ScriptName => self.script_name = Some(value),
            Kind::PathInfo => self.path_info = Some(value),
            Kind::ContentLength => self.content_length = Some(value),
            Kind::ContentType => self.content_type = Some(value),
            Kind::HttpContentLength => self.http_content_length = Some(value),
            Kind::HttpContentType => self.http_content_type = Some(value),
            Kind::DocumentUri => self.document_uri = Some(value),
            Kind::RequestUri => self.request_uri = Some(value),
            Kind::Https => self.https = Some(value),
            Kind::RequestScheme => self.request_scheme = Some(value),
            Kind::RequestMethod => self.method = Some(value),
            Kind::QueryString => self.query_string = Some(value),
            Kind::HttpHost => self.http_host = Some(value),
            Kind::ServerName => self.has_server_name = true,
            Kind::ServerPort => self.has_server_port = true,
            Kind::ServerProtocol => self.has_server_protocol = true,
            Kind::RemoteAddr => self.remote_addr = Some(value),
        }
    }
}

/// [`build`] with the worker's cache: from a template when one fits, else item by item.
fn build_with<'py, 'p>(
    py: Python<'py>,
    cache: &mut Cache,
    params: &'p Params,
    role: Role,
    mount: &str,
    streams: Streams<'_, 'py>,
) -> PyResult<(Bound<'py, PyDict>, RequestInfo<'p>)> {
    // The usual case: the params have the shape of a template's; the one the last
    // request matched is tried first.
    let mut changed = Vec::new();
    let mut derived = None;
    let (count, last) = (cache.templates.len(), cache.last_template);
    for index in (0..count).map(|i| (last + i) % count) {
        let mut seen = Seen::default();
        changed.clear();
        let Some(same_read) = cache.templates[index].walk(params, &mut seen, &mut changed) else {
            continue;
        };
        if same_read && cache.templates[index].derives_the_same(role, &streams) {
            let environ = cache.copy_template(py, index, &changed, Derived::Same(&streams))?;
            return Ok((environ, request_info(&seen)));
        }
        // The derived items depend on the params alone: the same for every template.
        if derived.is_none() {
            let mut items = Vec::with_capacity(16);
            derive(py, cache, &seen, role, mount, &streams, &mut items)?;
            derived = Some(items);
        }
        let items = derived.as_deref().expect("derived above");
        if cache.derived_fit(index, items) {
            let environ = cache.copy_template(py, index, &changed, Derived::Items(items))?;
            return Ok((environ, request_info(&seen)));
        }
    }
    build_items(py, cache, params, role, mount, streams)
}

/// [`build_with`] when no template fits: the environ listed as items, then made in one
/// go and kept as a template.
fn build_items<'py, 'p>(
    py: Python<'py>,
    cache: &mut Cache,
    params: &'p Params,
    role: Role,
    mount: &str,
    streams: Streams<'_, 'py>,
) -> PyResult<(Bound<'py, PyDict>, RequestInfo<'p>)> {
    let mut seen = Seen::default();
    let mut items: Vec<Item<'_, 'py>> = Vec::with_capacity(48);
    cache.builds += 1;
    let build = cache.builds;

    for (position, (name, value)) in params.iter().enumerate() {
        let index = cache.entry_at(py, position, name);
        let kind = index.map_or_else(|| Kind::of(name), |i| cache.entries[i].kind);
        seen.note(kind, value);
        if !kind.copied() {
            continue;
        }
        let Some(i) = index else {
            // Repeats of uncached names are resolved against the dict (`make`).
            items.push(Item {
                key: Key::Owned(latin1(py, name), name),
                value: latin1(py, value).into_any(),
                shareable: false,
                own: false,
            });
            continue;
        };
        let (listed_in, listed_at) = cache.entries[i].listed;
        if listed_in == build && name.starts_with(b"HTTP_") {
            // nginx before 1.23 sends a repeated request header as repeated HTTP_*
            // params; join them as an HTTP proxy would (RFC 9110 §5.3), cookies with
            // "; ". Other repeated params keep the last value (a repeated item: later
            // items overwrite earlier ones).
            let first = &mut items[listed_at as usize];
            let sep = if name == b"HTTP_COOKIE" { "; " } else { ", " };
            let mut joined: String = first.value.extract()?;
            joined.push_str(sep);
            joined.extend(value.iter().map(|&b| char::from(b)));
            first.value = PyString::new(py, &joined).into_any();
            first.shareable = false;
            continue;
        }
        // Items number at most the params plus a few, far below 2^32.
        cache.entries[i].listed = (build, items.len() as u32);
        let (value, shareable) = cache.value(py, i, value);
        items.push(Item {
            key: Key::Cached(cache.entries[i].key.as_ptr()),
            value: value.into_any(),
            shareable,
            own: false,
        });
    }
    let own = items.len();
    derive(py, cache, &seen, role, mount, &streams, &mut items)?;
    let environ = make(py, &items)?;
    let derived = items.len() - own;
    cache.keep_template(py, params, &environ, &items, derived, role)?;
    Ok((environ, request_info(&seen)))
}

/// The driver's facts about the request, from what its params say.
fn request_info<'p>(seen: &Seen<'p>) -> RequestInfo<'p> {
    let method = match seen.method {
        Some(m) if !m.is_empty() => http::log_safe(m),
        _ => Cow::Borrowed("GET"),
    };
    let uri = match seen.request_uri {
        Some(uri) if !uri.is_empty() => http::log_safe(uri),
        _ => {
            let mut uri = full_path(seen);
            if let Some(q) = seen.query_string.filter(|q| !q.is_empty()) {
                uri.push(b'?');
                uri.extend_from_slice(q);
            }
            Cow::Owned(http::log_safe(&uri).into_owned())
        }
    };
    RequestInfo {
        method,
        uri,
        client: seen.remote_addr.filter(|a| !a.is_empty()),
        content_length: content_length(seen).map(|(_, n)| n),
    }
}

/// The request's full path, before it is split at the mount point (see
/// [`http::full_path`]).
fn full_path(seen: &Seen<'_>) -> Vec<u8> {
    http::full_path(
        seen.script_name,
        seen.path_info,
        seen.document_uri,
        seen.request_uri,
    )
}

/// CONTENT_LENGTH: the CGI one, else the header copy; empty or unparsable values are
/// left out. The raw value and the length.
fn content_length<'p>(seen: &Seen<'p>) -> Option<(&'p [u8], u64)> {
    let raw = seen
        .content_length
        .filter(|v| !v.is_empty())
        .or(seen.http_content_length.filter(|v| !v.is_empty()))?;
    http::parse_content_length(raw).map(|n| (raw, n))
}

/// The environ items holding the request's own objects: `wsgi.input`, `wsgi.errors`
/// and (a filter request) `fcgi.data`, never kept in a template.
fn own_objects<'a, 'py>(
    py: Python<'py>,
    streams: &'a Streams<'_, 'py>,
) -> impl Iterator<Item = (&'a Bound<'py, PyString>, &'a Bound<'py, PyAny>)> {
    [
        (intern!(py, "wsgi.input"), Some(streams.input)),
        (intern!(py, "wsgi.errors"), Some(streams.errors)),
        (intern!(py, "fcgi.data"), streams.data),
    ]
    .into_iter()
    .filter_map(|(key, value)| value.map(|v| (key, v)))
}

/// Push the items that do not come from a param of their own name: CONTENT_LENGTH and
/// CONTENT_TYPE, defaults for missing CGI variables, SCRIPT_NAME and PATH_INFO split at
/// the mount point, the `wsgi.*` ones and FCGI_ROLE.
fn derive<'py, 'p>(
    py: Python<'py>,
    cache: &mut Cache,
    seen: &Seen<'p>,
    role: Role,
    mount: &str,
    streams: &Streams<'_, 'py>,
    items: &mut Vec<Item<'_, 'py>>,
) -> PyResult<()> {
    // CONTENT_LENGTH / CONTENT_TYPE: the CGI ones, else the header copies; empty or
    // (for the length) unparsable values are left out.
    if let Some((raw, _)) = content_length(seen) {
        items.push(cache.item(py, CONTENT_LENGTH, raw));
    }
    if let Some(ctype) = seen
        .content_type
        .filter(|v| !v.is_empty())
        .or(seen.http_content_type.filter(|v| !v.is_empty()))
    {
        items.push(cache.item(py, CONTENT_TYPE, ctype));
    }

    if seen.method.is_none_or(<[u8]>::is_empty) {
        let get = intern!(py, "GET").as_any();
        items.push(Item::fixed(intern!(py, "REQUEST_METHOD"), get, true));
    }
    let scheme = http::url_scheme(seen.https, seen.request_scheme);
    if !seen.has_server_name {
        let host = seen
            .http_host
            .map(host_without_port)
            .filter(|h| !h.is_empty())
            .unwrap_or(b"localhost");
        items.push(cache.item(py, SERVER_NAME, host));
    }
    if !seen.has_server_port {
        let port = if scheme == "https" {
            intern!(py, "443")
        } else {
            intern!(py, "80")
        };
        items.push(Item::fixed(intern!(py, "SERVER_PORT"), port.as_any(), true));
    }
    if !seen.has_server_protocol {
        let protocol = intern!(py, "HTTP/1.1").as_any();
        items.push(Item::fixed(intern!(py, "SERVER_PROTOCOL"), protocol, true));
    }
    if seen.query_string.is_none() {
        let empty = intern!(py, "").as_any();
        items.push(Item::fixed(intern!(py, "QUERY_STRING"), empty, true));
    }

    let full = full_path(seen);
    let (script, path) = http::split_mount(&full, mount.as_bytes());
    items.push(cache.item(py, SCRIPT_NAME, script));
    items.push(cache.item(py, PATH_INFO, path));

    static WSGI_VERSION: PyOnceLock<Py<PyTuple>> = PyOnceLock::new();
    let version = WSGI_VERSION
        .get_or_try_init(py, || PyTuple::new(py, [1, 0]).map(Bound::unbind))?
        .bind(py)
        .as_any();
    let url_scheme = if scheme == "https" {
        intern!(py, "https")
    } else {
        intern!(py, "http")
    };
    let yes = PyBool::new(py, true).to_owned().into_any();
    let no = PyBool::new(py, false).to_owned().into_any();
    items.extend([
        Item::fixed(intern!(py, "wsgi.version"), version, true),
        Item::fixed(intern!(py, "wsgi.url_scheme"), url_scheme.as_any(), true),
        Item::own_object(intern!(py, "wsgi.input"), streams.input),
        Item::own_object(intern!(py, "wsgi.errors"), streams.errors),
        Item::fixed(intern!(py, "wsgi.multithread"), &no, true),
        Item::fixed(intern!(py, "wsgi.multiprocess"), &yes, true),
        Item::fixed(intern!(py, "wsgi.run_once"), &no, true),
        // The body always ends at the end of FCGI_STDIN, so apps may read to EOF
        // without a CONTENT_LENGTH (the mod_wsgi / gunicorn convention Werkzeug
        // honours).
        Item::fixed(intern!(py, "wsgi.input_terminated"), &yes, true),
        Item::fixed(
            intern!(py, "wsgi.file_wrapper"),
            streams.file_wrapper.as_any(),
            true,
        ),
    ]);
    let role_name = match role {
        Role::Responder => Some(intern!(py, "RESPONDER")),
        Role::Authorizer => Some(intern!(py, "AUTHORIZER")),
        Role::Filter => Some(intern!(py, "FILTER")),
        Role::Other(_) => None,
    };
    if let Some(role_name) = role_name {
        items.push(Item::fixed(
            intern!(py, "FCGI_ROLE"),
            role_name.as_any(),
            true,
        ));
    }
    if let Some(data) = streams.data {
        items.push(Item::own_object(intern!(py, "fcgi.data"), data));
    }
    Ok(())
}

/// A new environ holding `items`, applied in order.
fn make<'py>(py: Python<'py>, items: &[Item<'_, 'py>]) -> PyResult<Bound<'py, PyDict>> {
    let environ = PyDict::new(py);
    for item in items {
        match &item.key {
            Key::Cached(key) => set_raw(&environ, *key, &item.value)?,
            Key::Owned(key, name) => {
                // A repeated header the cache could not take: joined as in
                // `build_with`.
                if name.starts_with(b"HTTP_") {
                    if let Some(prev) = environ.get_item(key)? {
                        let sep = if *name == b"HTTP_COOKIE" { "; " } else { ", " };
                        let mut joined: String = prev.extract()?;
                        joined.push_str(sep);
                        joined.push_str(&item.value.extract::<String>()?);
                        environ.set_item(key, joined)?;
                        continue;
                    }
                }
                environ.set_item(key, &item.value)?;
            }
        }
    }
    Ok(environ)
}

/// The host part of a Host header value (`example.com:8080` -> `example.com`,
/// `[::1]:80` -> `[::1]`).
fn host_without_port(host: &[u8]) -> &[u8] {
    if host.starts_with(b"[") {
        return match host.iter().position(|&b| b == b']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.iter().rposition(|&b| b == b':') {
        Some(colon) => &host[..colon],
        None => host,
    }
}
