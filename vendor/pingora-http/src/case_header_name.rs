// Copyright 2026 Cloudflare, Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

use crate::*;
use bytes::Bytes;
use http::header;

#[derive(Debug, Clone)]
pub struct CaseHeaderName(Bytes);

impl CaseHeaderName {
    pub fn new(name: String) -> Self {
        CaseHeaderName(name.into())
    }
}

impl CaseHeaderName {
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    pub fn from_slice(buf: &[u8]) -> Self {
        CaseHeaderName(Bytes::copy_from_slice(buf))
    }
}

/// A trait that converts into case-sensitive header names.
pub trait IntoCaseHeaderName {
    fn into_case_header_name(self) -> CaseHeaderName;

    /// The name parsed, with the case it is written in. By default the case's bytes are
    /// parsed; a name that is parsed already ([`StaticHeaderName`]) is returned as it is.
    fn into_parsed_case_header_name(self) -> Result<(HeaderName, CaseHeaderName)>
    where
        Self: Sized,
    {
        let case_header_name = self.into_case_header_name();
        let header_name: HeaderName = case_header_name
            .as_slice()
            .try_into()
            .or_err(InvalidHTTPHeader, "invalid header name")?;
        Ok((header_name, case_header_name))
    }
}

/// A header name known when the program is written, with the case it is sent in: inserting
/// it neither parses the name again nor copies it (for a name the `http` crate does not know,
/// `HeaderName::from_static` borrows its bytes). For a proxy that adds the same headers to
/// every request.
///
/// ```
/// use http::header::HeaderName;
/// use pingora_http::{RequestHeader, StaticHeaderName};
///
/// const X_FORWARDED_FOR: StaticHeaderName =
///     StaticHeaderName::new(HeaderName::from_static("x-forwarded-for"), "X-Forwarded-For");
///
/// let mut req = RequestHeader::build("GET", b"/", None).unwrap();
/// req.insert_header(X_FORWARDED_FOR, "192.0.2.1").unwrap();
/// let mut wire = vec![];
/// req.header_to_h1_wire(&mut wire);
/// assert_eq!(wire, b"X-Forwarded-For: 192.0.2.1\r\n");
/// ```
#[derive(Debug, Clone)]
pub struct StaticHeaderName {
    name: HeaderName,
    case: &'static str,
}

impl StaticHeaderName {
    /// `name` sent as `case`, which must be the same name in any case (checked when it is
    /// inserted, in debug builds).
    pub const fn new(name: HeaderName, case: &'static str) -> Self {
        StaticHeaderName { name, case }
    }
}

impl IntoCaseHeaderName for StaticHeaderName {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(Bytes::from_static(self.case.as_bytes()))
    }

    fn into_parsed_case_header_name(self) -> Result<(HeaderName, CaseHeaderName)> {
        debug_assert!(
            self.name.as_str().eq_ignore_ascii_case(self.case),
            "{} is not written {}",
            self.name,
            self.case
        );
        Ok((
            self.name,
            CaseHeaderName(Bytes::from_static(self.case.as_bytes())),
        ))
    }
}

impl IntoCaseHeaderName for CaseHeaderName {
    fn into_case_header_name(self) -> CaseHeaderName {
        self
    }
}

impl IntoCaseHeaderName for String {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(self.into())
    }
}

impl IntoCaseHeaderName for &'static str {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(self.into())
    }
}

impl IntoCaseHeaderName for HeaderName {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(titled_header_name(&self))
    }
}

impl IntoCaseHeaderName for &HeaderName {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(titled_header_name(self))
    }
}

impl IntoCaseHeaderName for Bytes {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(self)
    }
}

fn titled_header_name(header_name: &HeaderName) -> Bytes {
    titled_header_name_str(header_name).map_or_else(
        || Bytes::copy_from_slice(header_name.as_str().as_bytes()),
        |s| Bytes::from_static(s.as_bytes()),
    )
}

pub(crate) fn titled_header_name_str(header_name: &HeaderName) -> Option<&'static str> {
    Some(match *header_name {
        header::ACCEPT_RANGES => "Accept-Ranges",
        header::AGE => "Age",
        header::CACHE_CONTROL => "Cache-Control",
        header::CONNECTION => "Connection",
        header::CONTENT_TYPE => "Content-Type",
        header::CONTENT_ENCODING => "Content-Encoding",
        header::CONTENT_LENGTH => "Content-Length",
        header::DATE => "Date",
        header::TRANSFER_ENCODING => "Transfer-Encoding",
        header::HOST => "Host",
        header::SERVER => "Server",
        header::SET_COOKIE => "Set-Cookie",
        // TODO: add more const header here to map to their titled case
        // TODO: automatically upper case the first letter?
        _ => {
            return None;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_static_header_name() {
        const VIA: StaticHeaderName = StaticHeaderName::new(header::VIA, "Via");
        let (name, case) = VIA.into_parsed_case_header_name().unwrap();
        assert_eq!(name, header::VIA);
        assert_eq!(case.as_slice(), b"Via");
        let custom = StaticHeaderName::new(HeaderName::from_static("x-a"), "X-A");
        assert_eq!(custom.into_case_header_name().as_slice(), b"X-A");
        // Any other name is parsed from its case, as before.
        let (name, case) = "X-B".into_parsed_case_header_name().unwrap();
        assert_eq!((name.as_str(), case.as_slice()), ("x-b", &b"X-B"[..]));
        assert!("bad name".into_parsed_case_header_name().is_err());
    }

    #[test]
    fn test_case_header_name() {
        assert_eq!("FoO".into_case_header_name().as_slice(), b"FoO");
        assert_eq!("FoO".to_string().into_case_header_name().as_slice(), b"FoO");
        assert_eq!(header::SERVER.into_case_header_name().as_slice(), b"Server");
    }
}
