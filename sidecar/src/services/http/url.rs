//! URL normalisation: one canonical form for the allowlist to match and for
//! the client to connect to, produced by a WHATWG parser (the `url` crate).
//! The transport sends this form and checks that the URI it dials names the
//! same host and port (`transport::uri`), so there is no parser differential
//! to exploit.
//!
//! The parser lowercases, applies IDNA (`bücher.example` becomes
//! `xn--bcher-kva.example`), decodes percent-escapes in the host, rewrites
//! every IPv4 spelling (`2130706433`, `0x7f.1`, `0177.0.0.1`, `127.1`) to
//! dotted decimal and fills in default ports. On top of that this module
//! strips trailing dots (then reads the host again, since `127.0.0.1..`
//! becomes an IPv4 literal) and refuses what is ambiguous or carries secrets:
//! userinfo, backslashes, whitespace and control characters.

use std::fmt;
use std::net::IpAddr;

use url::{Host, Url};

use crate::guest_text::{SHORT, escaped};

/// Longest URL accepted, in bytes.
pub const MAX_URL_LEN: usize = 8 * 1024;

/// The host part of a normalised URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TargetHost {
    /// A DNS name: lowercase, ASCII (punycode), no trailing dot.
    Domain(String),
    /// An IP literal.
    Ip(IpAddr),
}

impl fmt::Display for TargetHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetHost::Domain(name) => f.write_str(name),
            TargetHost::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            TargetHost::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// A request URL after normalisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The URL to send (fragment removed, trailing dot stripped).
    pub url: Url,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// Normalised host.
    pub host: TargetHost,
    /// Explicit port, or the scheme's default.
    pub port: u16,
}

impl Target {
    /// `scheme://host:port`, the part the allowlist matches.
    pub fn origin(&self) -> String {
        format!("{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// Why a URL was refused before any policy was consulted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Not a URL at all.
    #[error("invalid URL: {0}")]
    Invalid(String),
    /// Longer than [`MAX_URL_LEN`].
    #[error("URL longer than {MAX_URL_LEN} bytes")]
    TooLong,
    /// Contains a character that parsers disagree about.
    #[error("URL contains {0}, which is refused as ambiguous")]
    Ambiguous(&'static str),
    /// Only `http` and `https` are supported.
    #[error("scheme `{}` is not supported (only http and https)", escaped(.0, SHORT))]
    Scheme(String),
    /// `user:password@` in a URL.
    #[error("URLs with credentials (user:password@host) are refused; the platform injects credentials")]
    Credentials,
    /// No host, or an empty one.
    #[error("URL has no host")]
    NoHost,
}

/// Normalises `input`, or says why it is refused.
pub fn normalize(input: &str) -> Result<Target, UrlError> {
    if input.len() > MAX_URL_LEN {
        return Err(UrlError::TooLong);
    }
    if input.contains('\\') {
        return Err(UrlError::Ambiguous("a backslash"));
    }
    let spaced = if input.is_ascii() {
        input.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    } else {
        input.chars().any(|c| c.is_whitespace() || c.is_control())
    };
    if spaced {
        return Err(UrlError::Ambiguous("whitespace or a control character"));
    }
    let mut url = Url::parse(input).map_err(|e| UrlError::Invalid(e.to_string()))?;
    let scheme = match url.scheme() {
        "http" => "http",
        "https" => "https",
        other => return Err(UrlError::Scheme(other.to_string())),
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlError::Credentials);
    }
    // A trailing dot is stripped by rewriting the URL, and the host is read
    // back from the rewritten URL: the rewrite can change the host's class
    // (`127.0.0.1..` parses as a name, but `127.0.0.1` is an IPv4 literal
    // the client would dial without the resolver), and what the allowlist
    // and the address guard judge must be what is sent.
    if let Some(Host::Domain(name)) = url.host()
        && name.ends_with('.')
    {
        let name = name.trim_end_matches('.').to_string();
        if name.is_empty() {
            return Err(UrlError::NoHost);
        }
        url.set_host(Some(&name)).map_err(|e| UrlError::Invalid(e.to_string()))?;
    }
    let host = match url.host() {
        // An empty label (`a..example.com`) names nothing DNS can resolve,
        // yet `*.example.com` would match it: refuse it as malformed.
        Some(Host::Domain(name)) if name.starts_with('.') || name.contains("..") => {
            return Err(UrlError::Invalid(format!("host `{}` has an empty label", escaped(name, SHORT))));
        }
        Some(Host::Domain(name)) => TargetHost::Domain(name.to_string()),
        Some(Host::Ipv4(ip)) => TargetHost::Ip(IpAddr::V4(ip)),
        Some(Host::Ipv6(ip)) => TargetHost::Ip(IpAddr::V6(ip)),
        None => return Err(UrlError::NoHost),
    };
    let port = url.port_or_known_default().ok_or(UrlError::NoHost)?;
    url.set_fragment(None);
    Ok(Target { url, scheme, host, port })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(input: &str) -> String {
        normalize(input).map(|t| t.origin()).unwrap_or_else(|e| format!("error: {e}"))
    }

    #[test]
    fn equivalent_spellings_normalise_to_one_origin() {
        let cases = [
            ("https://API.Example.COM/x", "https://api.example.com:443"),
            ("https://api.example.com./x", "https://api.example.com:443"),
            ("https://api.example.com:443/x", "https://api.example.com:443"),
            ("http://api.example.com:80", "http://api.example.com:80"),
            ("https://bücher.example/", "https://xn--bcher-kva.example:443"),
            ("https://%61pi.example.com/", "https://api.example.com:443"),
            ("http://2130706433/", "http://127.0.0.1:80"),
            ("http://0x7f.1/", "http://127.0.0.1:80"),
            ("http://0177.0.0.1/", "http://127.0.0.1:80"),
            ("http://127.1/", "http://127.0.0.1:80"),
            ("http://[::FFFF:7f00:1]/", "http://[::ffff:127.0.0.1]:80"),
            ("https://example.com/#frag", "https://example.com:443"),
            // Stripping the dots leaves an IPv4 literal: judged as one.
            ("http://127.0.0.1../", "http://127.0.0.1:80"),
            ("http://0x7f.1.../", "http://127.0.0.1:80"),
            ("http://example.com../", "http://example.com:80"),
        ];
        for (input, expected) in cases {
            assert_eq!(origin(input), expected, "{input}");
        }
    }

    #[test]
    fn ambiguous_or_credential_bearing_urls_are_refused() {
        let cases = [
            ("http://allowed.com@evil.com/", UrlError::Credentials),
            ("http://user:pw@allowed.com/", UrlError::Credentials),
            ("http://allowed.com\\@evil.com/", UrlError::Ambiguous("a backslash")),
            ("http://allo\twed.com/", UrlError::Ambiguous("whitespace or a control character")),
            ("http://allowed.com/\n", UrlError::Ambiguous("whitespace or a control character")),
            ("ftp://allowed.com/", UrlError::Scheme("ftp".into())),
            ("file:///etc/passwd", UrlError::Scheme("file".into())),
            ("gopher://allowed.com/", UrlError::Scheme("gopher".into())),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize(input).unwrap_err(), expected, "{input}");
        }
        assert!(matches!(normalize("not a url").unwrap_err(), UrlError::Ambiguous(_)));
        assert!(matches!(normalize("http://").unwrap_err(), UrlError::Invalid(_)));
        assert!(matches!(normalize("http://./").unwrap_err(), UrlError::NoHost | UrlError::Invalid(_)));
        for empty_label in ["http://a..example.com/", "http://.example.com/", "http://a...example.com./"] {
            assert!(matches!(normalize(empty_label).unwrap_err(), UrlError::Invalid(_)), "{empty_label}");
        }
        assert_eq!(normalize(&format!("http://a.com/{}", "x".repeat(MAX_URL_LEN))).unwrap_err(), UrlError::TooLong);
        let longest = format!("http://a.com/{}", "x".repeat(MAX_URL_LEN - "http://a.com/".len()));
        assert!(normalize(&longest).is_ok(), "{MAX_URL_LEN} bytes are allowed");
        // Beyond ASCII: a space that is no control (U+3000), a control that
        // is no space (U+009B, the one-byte CSI).
        for spaced in ["http://example.com/ä\u{3000}x", "http://example.com/ä\u{9b}31m"] {
            assert!(matches!(normalize(spaced).unwrap_err(), UrlError::Ambiguous(_)), "{spaced:?}");
        }
    }

    #[test]
    fn the_url_sent_is_the_normalised_one() {
        let target = normalize("https://API.example.com.:443/a/../b?q=1#f").unwrap();
        assert_eq!(target.url.as_str(), "https://api.example.com/b?q=1");
    }
}
