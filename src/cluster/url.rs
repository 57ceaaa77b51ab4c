//! The `--redis` URL: `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`.
//!
//! Parsing is strict so that a typo is a flag error at start rather than a
//! server that keeps failing to reach the wrong Redis.

use std::fmt;
use std::str::FromStr;

pub const DEFAULT_PORT: u16 = 6379;

/// Where Redis is and how to log in to it.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// A host name, or an IP address without brackets (`::1`, not `[::1]`).
    pub host: String,
    pub port: u16,
    /// For Redis 6 ACL users; `None` logs in as the default user.
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: u32,
}

impl RedisUrl {
    /// `host:port` as `std::net::ToSocketAddrs` takes it (IPv6 bracketed).
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Shows the URL with the password masked, so it can go into logs.
impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("redis://")?;
        if self.password.is_some() {
            if let Some(user) = &self.username {
                f.write_str(user)?;
            }
            f.write_str(":***@")?;
        }
        f.write_str(&self.address())?;
        if self.db != 0 {
            write!(f, "/{}", self.db)?;
        }
        Ok(())
    }
}

/// Masked like `Display`: a `{:?}` in a log or panic must not leak the
/// password either.
impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({self})")
    }
}

/// Why a URL was refused, worded to follow `invalid --redis URL: `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlError(pub String);

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UrlError {}

fn error<T>(message: impl Into<String>) -> Result<T, UrlError> {
    Err(UrlError(message.into()))
}

impl FromStr for RedisUrl {
    type Err = UrlError;

    fn from_str(text: &str) -> Result<RedisUrl, UrlError> {
        let rest = match text.split_once("://") {
            Some(("redis", rest)) => rest,
            Some(("rediss", _)) => return error("TLS (rediss://) is not supported"),
            Some((scheme, _)) => {
                return error(format!("unknown scheme {scheme}://, expected redis://"))
            }
            None => return error("expected redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]"),
        };
        if rest.contains(['?', '#']) {
            return error("query strings and fragments are not supported");
        }
        // The password may itself contain '@' or '/' when percent-encoding
        // was forgotten; the last '@' is the one that ends it.
        let (credentials, location) = match rest.rsplit_once('@') {
            Some((credentials, location)) => (Some(credentials), location),
            None => (None, rest),
        };
        let (username, password) = match credentials {
            None => (None, None),
            Some(credentials) => {
                let Some((user, password)) = credentials.split_once(':') else {
                    return error(
                        "credentials need a ':' before the password (USER:PASSWORD@ or :PASSWORD@)",
                    );
                };
                let user = percent_decode(user, "user name")?;
                let password = percent_decode(password, "password")?;
                (
                    (!user.is_empty()).then_some(user),
                    (!password.is_empty()).then_some(password),
                )
            }
        };
        if username.is_some() && password.is_none() {
            return error("a user name needs a password");
        }
        let (authority, db) = match location.split_once('/') {
            None => (location, 0),
            Some((authority, "")) => (authority, 0),
            // `parse` alone would also take `+1`.
            Some((authority, db)) if db.bytes().all(|b| b.is_ascii_digit()) => {
                match db.parse::<u32>() {
                    Ok(db) => (authority, db),
                    Err(_) => return error(format!("database number {db} is too large")),
                }
            }
            Some((_, db)) => return error(format!("database must be a number, not {db:?}")),
        };
        let (host, port) = split_host_port(authority)?;
        Ok(RedisUrl {
            host,
            port,
            username,
            password,
            db,
        })
    }
}

fn split_host_port(authority: &str) -> Result<(String, u16), UrlError> {
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let Some((host, after)) = bracketed.split_once(']') else {
            return error("missing ']' after the IPv6 address");
        };
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return error(format!("invalid IPv6 address [{host}]"));
        }
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return error(format!("unexpected {after:?} after the IPv6 address")),
            },
        }
    } else {
        match authority.split_once(':') {
            Some((_, port)) if port.contains(':') => {
                return error("an IPv6 address must be in brackets, as in [::1]:6379")
            }
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return error("missing host");
    }
    if host.contains(|c: char| c.is_whitespace() || c == '%') {
        return error(format!("invalid host {host:?}"));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(text) => match text.parse::<u16>() {
            Ok(port) if port != 0 && text.bytes().all(|b| b.is_ascii_digit()) => port,
            _ => return error(format!("invalid port {text:?}")),
        },
    };
    Ok((host.to_string(), port))
}

/// Decodes `%XX` escapes, so a password may hold ':' or '@'.
fn percent_decode(text: &str, what: &str) -> Result<String, UrlError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                Some(byte) => out.push(byte),
                None => return error(format!("bad percent escape in the {what}")),
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).or_else(|_| error(format!("the {what} is not UTF-8 after decoding")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> RedisUrl {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn refuse(text: &str) -> String {
        match text.parse::<RedisUrl>() {
            Ok(url) => panic!("{text} accepted as {url}"),
            Err(e) => e.0,
        }
    }

    #[test]
    fn host_alone_gets_defaults() {
        let url = parse("redis://localhost");
        assert_eq!(url.host, "localhost");
        assert_eq!(url.port, 6379);
        assert_eq!(url.db, 0);
        assert_eq!(url.username, None);
        assert_eq!(url.password, None);
        assert_eq!(url.address(), "localhost:6379");
    }

    #[test]
    fn every_part() {
        let url = parse("redis://alice:s3cret@redis.example:6380/4");
        assert_eq!(url.host, "redis.example");
        assert_eq!(url.port, 6380);
        assert_eq!(url.username.as_deref(), Some("alice"));
        assert_eq!(url.password.as_deref(), Some("s3cret"));
        assert_eq!(url.db, 4);
    }

    #[test]
    fn password_without_user() {
        let url = parse("redis://:pw@127.0.0.1/");
        assert_eq!(url.username, None);
        assert_eq!(url.password.as_deref(), Some("pw"));
        assert_eq!(url.db, 0);
    }

    #[test]
    fn ipv6_in_brackets() {
        let url = parse("redis://[::1]:6379");
        assert_eq!(url.host, "::1");
        assert_eq!(url.port, 6379);
        assert_eq!(url.address(), "[::1]:6379");
        let url = parse("redis://:pw@[fe80::2]/2");
        assert_eq!(url.host, "fe80::2");
        assert_eq!(url.port, 6379);
        assert_eq!(url.db, 2);
    }

    #[test]
    fn percent_escapes_in_credentials() {
        let url = parse("redis://us%40er:p%3Aw%2Fd%25@h");
        assert_eq!(url.username.as_deref(), Some("us@er"));
        assert_eq!(url.password.as_deref(), Some("p:w/d%"));
    }

    #[test]
    fn raw_at_sign_in_password_ends_at_the_last_one() {
        let url = parse("redis://:p@ss@h:1");
        assert_eq!(url.password.as_deref(), Some("p@ss"));
        assert_eq!(url.host, "h");
    }

    #[test]
    fn display_masks_the_password() {
        let url = parse("redis://alice:s3cret@h:7/3");
        assert_eq!(url.to_string(), "redis://alice:***@h:7/3");
        assert!(!format!("{url:?}").contains("s3cret"));
        assert_eq!(parse("redis://[::1]").to_string(), "redis://[::1]:6379");
    }

    #[test]
    fn refusals_are_one_line_and_say_why() {
        let cases = [
            ("localhost:6379", "expected redis://"),
            ("http://h", "unknown scheme"),
            ("rediss://h", "TLS"),
            ("redis://", "missing host"),
            ("redis://h:", "invalid port"),
            ("redis://h:0", "invalid port"),
            ("redis://h:70000", "invalid port"),
            ("redis://h:+5", "invalid port"),
            ("redis://h/x", "database"),
            ("redis://h/+1", "database"),
            ("redis://h/1/2", "database"),
            ("redis://::1", "brackets"),
            ("redis://[::1", "']'"),
            ("redis://[nothost]:1", "IPv6"),
            ("redis://[::1]x", "after the IPv6"),
            ("redis://user@h", "':'"),
            ("redis://user:@h", "needs a password"),
            ("redis://:p%zz@h", "percent"),
            ("redis://:p%ff@h", "UTF-8"),
            ("redis://h?timeout=1", "query"),
            ("redis://h st", "invalid host"),
        ];
        for (text, needle) in cases {
            let message = refuse(text);
            assert!(message.contains(needle), "{text}: {message}");
            assert!(!message.contains('\n'), "{text}: {message}");
        }
    }
}
