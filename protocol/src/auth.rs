//! Credentials on the wire. Workers present a token (issued by `aimarket worker token create`) in
//! [`WORKER_TOKEN_HEADER`] on lease, release, heartbeat and submit; clients present an API key in
//! [`API_KEY_HEADER`] for operations that change state. Over HTTP both travel as
//! `Authorization: Bearer <secret>` (`X-Api-Key` works for keys too).

/// NATS header carrying a worker's token.
pub const WORKER_TOKEN_HEADER: &str = "Aimarket-Worker-Token";
/// NATS header carrying a client's API key.
pub const API_KEY_HEADER: &str = "Aimarket-Api-Key";
/// Prefix of worker tokens, so a leaked one is recognisable.
pub const TOKEN_PREFIX: &str = "amk_";

/// Splits `nats://user:password@host:port` into the URL without credentials and the
/// credentials (percent-decoded), since NATS clients take them separately. Several
/// comma-separated URLs share the first one's credentials.
pub fn split_credentials(url: &str) -> (String, Option<(String, String)>) {
    let mut creds = None;
    let urls: Vec<String> = url
        .split(',')
        .map(|one| {
            let one = one.trim();
            let (scheme, rest) = one.split_once("://").unwrap_or(("", one));
            match rest.rsplit_once('@') {
                Some((userinfo, host)) => {
                    if creds.is_none() {
                        let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                        creds = Some((percent_decode(user), percent_decode(pass)));
                    }
                    if scheme.is_empty() {
                        host.to_owned()
                    } else {
                        format!("{scheme}://{host}")
                    }
                }
                None => one.to_owned(),
            }
        })
        .collect();
    (urls.join(","), creds)
}

/// The servers of a credential-free URL list (`nats://a:4222,nats://b:4222`), one each: what
/// a NATS client takes to fail over between the nodes of a cluster (a comma-joined string would
/// be parsed as one URL).
pub fn servers(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect()
}

/// How often a NATS client pings its server when nothing says it: a frozen server (or a
/// silent network) is noticed after two unanswered pings, in seconds rather than minutes.
pub const DEFAULT_NATS_PING: std::time::Duration = std::time::Duration::from_secs(5);

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() && s.is_char_boundary(i + 3) {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_out_of_urls() {
        assert_eq!(
            split_credentials("nats://worker:p%40ss@127.0.0.1:4222"),
            (
                "nats://127.0.0.1:4222".to_owned(),
                Some(("worker".to_owned(), "p@ss".to_owned()))
            )
        );
        assert_eq!(
            split_credentials("nats://127.0.0.1:4222"),
            ("nats://127.0.0.1:4222".to_owned(), None)
        );
        assert_eq!(split_credentials("u:p@host:1,host2:2").0, "host:1,host2:2");
        assert_eq!(
            servers("nats://a:1, nats://b:2,,"),
            ["nats://a:1".to_owned(), "nats://b:2".to_owned()]
        );
    }
}
