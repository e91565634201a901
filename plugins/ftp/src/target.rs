//! What an identifier names: the server, the credentials to log in with, the path, and the
//! texts that may be shown of it (which never carry the password).
//!
//! Paths follow curl's reading of RFC 1738: `ftp://host/a/b.bin` is `a/b.bin` relative to the
//! login folder; `ftp://host//srv/b.bin` (or `%2F`) is the absolute `/srv/b.bin`.

use chiral_sdk::{engine::safe_name, options::Opts, PluginError};
use percent_encoding::percent_decode_str;
use url::Url;

/// The FTP control port (explicit FTPS uses it too).
pub const DEFAULT_PORT: u16 = 21;
/// User name tried when none is given anywhere.
pub const ANONYMOUS: &str = "anonymous";
/// Password sent with an anonymous login (by convention an e-mail-like token).
pub const ANONYMOUS_PASSWORD: &str = "chiral@";
/// Environment variables that supply credentials when the URL and the options do not.
pub const ENV_USER: &str = "CHIRAL_FTP_USER";
pub const ENV_PASSWORD: &str = "CHIRAL_FTP_PASSWORD";

/// Credentials from the plugin's options and the environment: used when the URL has none.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Defaults {
    pub user: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for Defaults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Defaults")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Defaults {
    /// Options (`user`, `password`) win over the environment (`CHIRAL_FTP_USER`,
    /// `CHIRAL_FTP_PASSWORD`); empty values count as absent.
    pub fn from_options_and_env(options: &Opts, env: impl Fn(&str) -> Option<String>) -> Self {
        let opt = |key: &str| options.get_raw(key).map(str::to_string);
        Self {
            user: opt("user").or_else(|| env(ENV_USER).filter(|v| !v.is_empty())),
            password: opt("password").or_else(|| env(ENV_PASSWORD).filter(|v| !v.is_empty())),
        }
    }
}

/// One FTP location, ready to connect to.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    /// `ftps://`: explicit TLS (`AUTH TLS`) on the control and data connections.
    pub secure: bool,
    /// Host name or address as written (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    pub user: String,
    /// Secret: never formatted into any message.
    pub password: String,
    /// The path as sent in commands (see the module notes); empty for the login folder.
    pub path: String,
    /// The URL named a folder (its path ends with `/`, or it is the server's root).
    pub is_dir: bool,
    /// `scheme://host[:port]/path`, without credentials, query or fragment.
    pub label: String,
    /// The proxy the control and data connections go through (the host's `proxy`).
    pub proxy: Option<chiral_sdk::net::Proxy>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("label", &self.label)
            .field("user", &self.user)
            .field("path", &self.path)
            .field("is_dir", &self.is_dir)
            .finish_non_exhaustive()
    }
}

impl Target {
    /// Parses an `ftp://` or `ftps://` identifier; credentials come from the URL first, then
    /// `defaults`, then the anonymous login.
    pub fn parse(identifier: &str, defaults: &Defaults) -> Result<Self, PluginError> {
        let text = identifier.trim();
        let shown = redact_identifier(text);
        let url = Url::parse(text).map_err(|e| PluginError::unsupported(format!("not an ftp URL ({e}): {shown}")))?;
        let secure = match url.scheme() {
            "ftp" => false,
            "ftps" => true,
            other => {
                return Err(PluginError::unsupported(format!(
                    "the ftp plugin handles ftp and ftps URLs, not {other}: {shown}"
                )))
            }
        };
        let host = match url.host() {
            Some(url::Host::Ipv6(a)) => a.to_string(),
            Some(h) => h.to_string(),
            None => return Err(PluginError::invalid(format!("URL has no host: {shown}"))),
        };
        if host.is_empty() {
            return Err(PluginError::invalid(format!("URL has no host: {shown}")));
        }
        let port = url.port().unwrap_or(DEFAULT_PORT);
        let url_password = url.password().map(decode);
        let user = Some(decode(url.username()))
            .filter(|u| !u.is_empty())
            .or_else(|| defaults.user.clone())
            .unwrap_or_else(|| ANONYMOUS.to_string());
        let anonymous = user.eq_ignore_ascii_case(ANONYMOUS) || user.eq_ignore_ascii_case("ftp");
        // The configured password goes with the configured user; without one, with any user
        // named in the URL (never with the anonymous login).
        let applies = match &defaults.user {
            Some(configured) => *configured == user,
            None => !anonymous,
        };
        let password = url_password.or_else(|| defaults.password.clone().filter(|_| applies)).unwrap_or_else(|| {
            if anonymous {
                ANONYMOUS_PASSWORD.to_string()
            } else {
                String::new()
            }
        });
        let (path, is_dir) = command_path(url.path());
        if path.contains(['\r', '\n', '\0']) {
            return Err(PluginError::invalid(format!("the path has a line break or NUL in it: {shown}")));
        }
        let label = label(&url);
        Ok(Self { secure, host, port, user, password, path, is_dir, label, proxy: None })
    }

    /// `host:port` to connect to (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The name a download of this target is saved under: the last path segment, else the host.
    pub fn name(&self) -> String {
        let last = self.path.trim_end_matches('/').rsplit('/').next().unwrap_or_default();
        if last.is_empty() || last == "." || last == ".." {
            safe_name(&self.host)
        } else {
            safe_name(last)
        }
    }

    /// `text` with the password replaced, for anything a server says back.
    pub fn scrub(&self, text: &str) -> String {
        scrub(text, &self.password)
    }

    /// A target for `path` on the same server and login (`path` as sent in commands).
    pub fn with_path(&self, path: &str) -> Self {
        let mut t = self.clone();
        t.path = path.to_string();
        t.is_dir = false;
        let base = self.label.split_once("://").map(|(s, rest)| (s, rest.split_once('/').map(|r| r.0).unwrap_or(rest)));
        if let Some((scheme, authority)) = base {
            let url_path = match path.strip_prefix('/') {
                Some(abs) => format!("/%2F{}", encode_path(abs)),
                None => format!("/{}", encode_path(path)),
            };
            t.label = format!("{scheme}://{authority}{url_path}");
        }
        t
    }
}

/// Percent-decodes a URL component (lossy for bytes that are not UTF-8).
fn decode(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// The command path of a URL path and whether it names a folder. A leading `/%2F` (decoded `//`)
/// makes it absolute; `;type=i` (RFC 1738 typecode) is dropped.
pub fn command_path(url_path: &str) -> (String, bool) {
    let raw = url_path.split(";type=").next().unwrap_or_default();
    let decoded = decode(raw);
    let is_dir = decoded.is_empty() || decoded.ends_with('/');
    let rel = decoded.strip_prefix('/').unwrap_or(&decoded);
    let trimmed = if rel.len() > 1 { rel.trim_end_matches('/') } else { rel };
    // "/" alone (from `ftp://host//`) stays the absolute root.
    (trimmed.to_string(), is_dir)
}

/// Escapes a command path back into a URL path (`/` kept as the separator).
pub fn encode_path(path: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
    const SEG: &AsciiSet = &CONTROLS
        .add(b' ')
        .add(b'"')
        .add(b'#')
        .add(b'%')
        .add(b'<')
        .add(b'>')
        .add(b'?')
        .add(b'`')
        .add(b'{')
        .add(b'}')
        .add(b';');
    utf8_percent_encode(path, SEG).to_string()
}

/// The accounting label: the URL without user, password, query or fragment.
pub fn label(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    u.as_str().to_string()
}

/// `text` with every occurrence of `secret` (raw and percent-encoded) replaced by `***`.
pub fn scrub(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        return text.to_string();
    }
    let mut out = text.replace(secret, "***");
    let encoded = percent_encoding::utf8_percent_encode(secret, percent_encoding::NON_ALPHANUMERIC).to_string();
    if encoded != secret && !encoded.is_empty() {
        out = out.replace(&encoded, "***");
    }
    out
}

/// An identifier as it may appear in a message: the user information of anything that looks
/// like `scheme://user:password@host` removed, cut to a one-line length. Works on text that
/// does not parse as a URL too (the error for a malformed URL must not print its password).
pub fn redact_identifier(text: &str) -> String {
    const MAX: usize = 200;
    let mut out = match text.find("://") {
        Some(i) => {
            let start = i + 3;
            let rest = &text[start..];
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            match rest[..end].rfind('@') {
                Some(at) => format!("{}{}", &text[..start], &rest[at + 1..]),
                None => text.to_string(),
            }
        }
        None => text.to_string(),
    };
    out.retain(|c| !c.is_control());
    if out.chars().count() > MAX {
        out = out.chars().take(MAX).collect::<String>() + "…";
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Target {
        Target::parse(s, &Defaults::default()).unwrap()
    }

    #[test]
    fn anonymous_file_url() {
        let t = parse("ftp://127.0.0.1:2121/pub/file%20one.bin");
        assert!(!t.secure);
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 2121));
        assert_eq!(t.user, "anonymous");
        assert_eq!(t.password, ANONYMOUS_PASSWORD);
        assert_eq!(t.path, "pub/file one.bin");
        assert!(!t.is_dir);
        assert_eq!(t.name(), "file one.bin");
        assert_eq!(t.label, "ftp://127.0.0.1:2121/pub/file%20one.bin");
        assert_eq!(t.authority(), "127.0.0.1:2121");
    }

    #[test]
    fn credentials_in_the_url_are_decoded_and_kept_out_of_the_label() {
        let t = parse("ftps://bob:p%40ss%3Aw0rd@files.example.org/home/x.iso;type=i");
        assert!(t.secure);
        assert_eq!(t.port, 21);
        assert_eq!(t.user, "bob");
        assert_eq!(t.password, "p@ss:w0rd");
        assert_eq!(t.path, "home/x.iso");
        assert_eq!(t.label, "ftps://files.example.org/home/x.iso;type=i");
        assert!(!format!("{t:?}").contains("w0rd"));
        assert!(!t.label.contains("bob"));
    }

    #[test]
    fn default_port_is_hidden_in_labels_and_ipv6_hosts_are_bracketed() {
        let t = parse("ftp://u:pw@[::1]:21/a");
        assert_eq!(t.host, "::1");
        assert_eq!(t.authority(), "[::1]:21");
        assert_eq!(t.label, "ftp://[::1]/a");
    }

    #[test]
    fn folders_and_absolute_paths() {
        let t = parse("ftp://h/dir/sub/");
        assert!(t.is_dir);
        assert_eq!(t.path, "dir/sub");
        assert_eq!(t.name(), "sub");
        let root = parse("ftp://h");
        assert!(root.is_dir);
        assert_eq!(root.path, "");
        assert_eq!(root.name(), "h");
        let abs = parse("ftp://h/%2Fsrv/data.bin");
        assert_eq!(abs.path, "/srv/data.bin");
        assert!(!abs.is_dir);
        assert_eq!(parse("ftp://h//").path, "/");
        assert_eq!(parse("ftp://h/..").name(), "h");
        // A decoded slash cannot make a name climb out of the output folder.
        assert_eq!(parse("ftp://h/a/..%2F..%2Fx").name(), "x");
    }

    #[test]
    fn credentials_from_options_and_environment() {
        let env = |k: &str| match k {
            ENV_USER => Some("envuser".to_string()),
            ENV_PASSWORD => Some("envpw".to_string()),
            _ => None,
        };
        let d = Defaults::from_options_and_env(&Opts::default(), env);
        assert_eq!(d.user.as_deref(), Some("envuser"));
        let t = Target::parse("ftp://h/x", &d).unwrap();
        assert_eq!((t.user.as_str(), t.password.as_str()), ("envuser", "envpw"));

        let opts = Opts::from_pairs([("user", "optuser"), ("password", "optpw")]);
        let d = Defaults::from_options_and_env(&opts, env);
        assert_eq!((d.user.as_deref(), d.password.as_deref()), (Some("optuser"), Some("optpw")));
        assert!(!format!("{d:?}").contains("optpw"));

        // The URL wins; its user only takes the configured password when it is the configured user.
        let t = Target::parse("ftp://alice@h/x", &d).unwrap();
        assert_eq!((t.user.as_str(), t.password.as_str()), ("alice", ""));
        let t = Target::parse("ftp://optuser@h/x", &d).unwrap();
        assert_eq!(t.password, "optpw");
        let t = Target::parse("ftp://alice:pw@h/x", &d).unwrap();
        assert_eq!(t.password, "pw");
        let only_pw = Defaults { user: None, password: Some("p".into()) };
        let t = Target::parse("ftp://carol@h/x", &only_pw).unwrap();
        assert_eq!(t.password, "p");
        let t = Target::parse("ftp://h/x", &only_pw).unwrap();
        assert_eq!((t.user.as_str(), t.password.as_str()), ("anonymous", ANONYMOUS_PASSWORD));
    }

    #[test]
    fn other_schemes_and_garbage_are_unsupported_and_never_echo_secrets() {
        for bad in ["http://h/x", "magnet:?xt=urn:btih:00", "", ":", "\0", "chiral-testkit-unknown://nothing/here"] {
            let e = Target::parse(bad, &Defaults::default()).unwrap_err();
            assert_eq!(e.kind, chiral_sdk::ErrorKind::Unsupported, "{bad:?}: {e}");
        }
        let e = Target::parse("sftp://u:hunter2@h/x", &Defaults::default()).unwrap_err();
        assert!(!e.message.contains("hunter2"), "{e}");
        let e = Target::parse("ftp://u:hunter2@/x", &Defaults::default()).unwrap_err();
        assert!(!e.message.contains("hunter2"), "{e}");
        let e = Target::parse("ftp://u:hunter2@h:99999/x", &Defaults::default()).unwrap_err();
        assert!(!e.message.contains("hunter2"), "{e}");
        assert!(Target::parse(&"x".repeat(70_000), &Defaults::default()).unwrap_err().message.len() < 400);
        let e = Target::parse("ftp://h/a%0D%0ADELE%20b", &Defaults::default()).unwrap_err();
        assert_eq!(e.kind, chiral_sdk::ErrorKind::Invalid);
    }

    #[test]
    fn redaction() {
        assert_eq!(redact_identifier("ftp://u:pw@h:21/x@y"), "ftp://h:21/x@y");
        assert_eq!(redact_identifier("ftp://h/x"), "ftp://h/x");
        assert_eq!(redact_identifier("weird://a:b@c@d/e"), "weird://d/e");
        assert_eq!(redact_identifier("no scheme u:pw@h"), "no scheme u:pw@h");
        assert_eq!(scrub("530 bad pass s3cr3t! (s3cr3t%21)", "s3cr3t!"), "530 bad pass *** (***)");
        assert_eq!(scrub("x", ""), "x");
    }

    #[test]
    fn paths_for_other_files_on_the_same_server() {
        let t = parse("ftp://u:pw@h:2121/dir/");
        let f = t.with_path("dir/a b.txt");
        assert_eq!(f.label, "ftp://h:2121/dir/a%20b.txt");
        assert_eq!(f.password, "pw");
        assert_eq!(t.with_path("/abs/x").label, "ftp://h:2121/%2Fabs/x");
    }
}
