//! Credentials inside configured URLs (`https://user:pass@proxy/v1`, `...?api-key=...`, as proxies
//! and gateways take them) never reach a client, a log line or a stored error: such a URL is shown
//! with its userinfo and query values replaced by `***`, and those parts are masked wherever they
//! appear in an error's text.

use reqwest::Url;

const MASK: &str = "***";

/// The URL as it may be shown. Text that is not a URL is returned as it is.
pub fn url(text: &str) -> String {
    let Ok(mut parsed) = Url::parse(text) else { return text.to_string() };
    if !parsed.username().is_empty() {
        let _ = parsed.set_username(MASK);
    }
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some(MASK));
    }
    if parsed.query().is_some() {
        let pairs: Vec<(String, String)> = parsed.query_pairs().map(|(k, _)| (k.into_owned(), MASK.into())).collect();
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &pairs {
            query.append_pair(k, v);
        }
        parsed.set_query(Some(&query.finish().replace("%2A", "*")));
    }
    parsed.to_string()
}

/// The parts of a URL that are credentials (userinfo and query values, as written and decoded),
/// for masking in any text that may quote the URL (an HTTP client's error, say).
pub fn url_secrets(text: &str) -> Vec<String> {
    let Ok(parsed) = Url::parse(text) else { return Vec::new() };
    let mut secrets = vec![parsed.username().to_string()];
    secrets.extend(parsed.password().map(str::to_string));
    secrets.extend(parsed.query_pairs().map(|(_, v)| v.into_owned()));
    if let Some(query) = parsed.query() {
        secrets.extend(query.split('&').filter_map(|pair| pair.split_once('=')).map(|(_, v)| v.to_string()));
    }
    let mut decoded: Vec<String> =
        secrets.iter().map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()).collect();
    secrets.append(&mut decoded);
    secrets.retain(|s| !s.is_empty());
    secrets.sort();
    secrets.dedup();
    // Longest first, so that a secret containing another is masked whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets
}

/// `text` with every URL in it shown redacted, and the credentials of `url` (4 characters or more)
/// masked wherever else they appear.
pub fn in_text(text: &str, url: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let start = rest[..at].rfind(|c: char| !(c.is_ascii_alphanumeric() || "+.-".contains(c))).map_or(0, |i| i + 1);
        let end = rest[at..].find(|c: char| c.is_whitespace() || "()<>\"'`".contains(c)).map_or(rest.len(), |i| at + i);
        out.push_str(&rest[..start]);
        out.push_str(&self::url(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    for secret in url_secrets(url).into_iter().filter(|s| s.len() >= 4) {
        out = out.replace(&secret, MASK);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn userinfo_and_query_values_are_masked() {
        assert_eq!(
            super::url("https://me:p%40ss@proxy.test/v1?api-key=k1&x=2"),
            "https://***:***@proxy.test/v1?api-key=***&x=***"
        );
        assert_eq!(super::url("https://api.openai.com/v1"), "https://api.openai.com/v1");
        assert_eq!(super::url("not a url"), "not a url");
        let error = "error sending request for url (https://me:p%40ss@proxy.test/v1/chat/completions?api-key=k1): p@ss";
        let masked = super::in_text(error, "https://me:p%40ss@proxy.test/v1?api-key=k1");
        assert!(!masked.contains("p%40ss") && !masked.contains("p@ss") && !masked.contains("k1"), "{masked}");
        assert!(masked.contains("proxy.test"), "{masked}");
    }
}
