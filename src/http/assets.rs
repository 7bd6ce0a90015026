//! Static files embedded in the binary: the demo site, the agent console,
//! the browser build of the JavaScript SDK and the embeddable web-chat widget.
//!
//! Nothing needs a build step: the SDK's ES modules under `clients/js/src/`
//! are served as they are under `/sdk/` (the widget's under
//! `/sdk/webchat/`), and the widget's stable entry point is
//! `/webchat/v1/webchat.js`, which other sites import from their own pages.
//! Those cross-origin module loads need CORS headers: see [`cors_headers`].

use crate::config::Config;

/// One embedded file.
pub(crate) struct Asset {
    pub content_type: &'static str,
    pub body: &'static [u8],
}

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const TS: &str = "text/plain; charset=utf-8";

/// Every embedded file: request path, content type, body.
static FILES: &[(&str, &str, &[u8])] = &[
    // Demo pages.
    ("/", HTML, include_bytes!("../../web/widget.html")),
    ("/console", HTML, include_bytes!("../../web/console.html")),
    (
        "/static/common.css",
        CSS,
        include_bytes!("../../web/common.css"),
    ),
    (
        "/static/widget.css",
        CSS,
        include_bytes!("../../web/widget.css"),
    ),
    (
        "/static/console.css",
        CSS,
        include_bytes!("../../web/console.css"),
    ),
    ("/static/ui.js", JS, include_bytes!("../../web/ui.js")),
    (
        "/static/console.js",
        JS,
        include_bytes!("../../web/console.js"),
    ),
    // The SDK, module by module.
    (
        "/sdk/index.js",
        JS,
        include_bytes!("../../clients/js/src/index.js"),
    ),
    (
        "/sdk/client.js",
        JS,
        include_bytes!("../../clients/js/src/client.js"),
    ),
    (
        "/sdk/actions.js",
        JS,
        include_bytes!("../../clients/js/src/actions.js"),
    ),
    (
        "/sdk/backoff.js",
        JS,
        include_bytes!("../../clients/js/src/backoff.js"),
    ),
    (
        "/sdk/codec.js",
        JS,
        include_bytes!("../../clients/js/src/codec.js"),
    ),
    (
        "/sdk/emitter.js",
        JS,
        include_bytes!("../../clients/js/src/emitter.js"),
    ),
    (
        "/sdk/errors.js",
        JS,
        include_bytes!("../../clients/js/src/errors.js"),
    ),
    (
        "/sdk/storage.js",
        JS,
        include_bytes!("../../clients/js/src/storage.js"),
    ),
    // The web-chat widget: its stable, versioned entry point for other
    // sites, and its modules next to the SDK's (the entry imports them
    // relatively, so a broker behind a path prefix works too).
    (
        "/webchat/v1/webchat.js",
        JS,
        include_bytes!("../../clients/js/src/webchat/embed.js"),
    ),
    (
        "/sdk/webchat/index.js",
        JS,
        include_bytes!("../../clients/js/src/webchat/index.js"),
    ),
    (
        "/sdk/webchat/widget.js",
        JS,
        include_bytes!("../../clients/js/src/webchat/widget.js"),
    ),
    (
        "/sdk/webchat/styles.js",
        JS,
        include_bytes!("../../clients/js/src/webchat/styles.js"),
    ),
    (
        "/sdk/webchat/dom.js",
        JS,
        include_bytes!("../../clients/js/src/webchat/dom.js"),
    ),
    (
        "/sdk/index.d.ts",
        TS,
        include_bytes!("../../clients/js/types/index.d.ts"),
    ),
];

/// Headers that let pages of other origins load an asset (the widget's and
/// the SDK's modules are imported cross-origin, which browsers only allow
/// with CORS). With no `allowed_origins` configured every origin may: `*`.
/// With a list, the request's `Origin` is echoed only when listed (compared
/// as the WebSocket upgrade compares it), and `Vary: Origin` tells caches
/// the answer depends on it. Kept apart from the HTTP layer so any server
/// front end can call it.
pub(crate) fn cors_headers(config: &Config, origin: Option<&str>) -> Vec<(&'static str, String)> {
    let Some(allowed) = config.allowed_origins.as_deref() else {
        return vec![("Access-Control-Allow-Origin", "*".to_owned())];
    };
    let mut headers = vec![("Vary", "Origin".to_owned())];
    let origin = origin.map(|o| o.trim().trim_end_matches('/'));
    if let Some(origin) = origin.filter(|o| !o.is_empty()) {
        if allowed
            .iter()
            .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin))
        {
            headers.push(("Access-Control-Allow-Origin", origin.to_owned()));
        }
    }
    headers
}

/// Other spellings of the pages' paths.
fn canonical(path: &str) -> &str {
    match path {
        "/index.html" | "/widget" | "/widget/" | "/widget.html" => "/",
        "/console/" | "/console.html" => "/console",
        other => other,
    }
}

/// The embedded file served at `path` (the request path without its query).
pub(crate) fn lookup(path: &str) -> Option<Asset> {
    let path = canonical(path);
    FILES
        .iter()
        .find(|(p, _, _)| *p == path)
        .map(|&(_, content_type, body)| Asset { content_type, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_and_sdk_are_served() {
        let widget = lookup("/").expect("widget page");
        assert!(widget.content_type.starts_with("text/html"));
        assert!(lookup("/console").is_some());
        assert!(lookup("/console/").is_some());
        assert!(lookup("/sdk/index.js").is_some());
        assert!(lookup("/webchat/v1/webchat.js").is_some());
        assert!(lookup("/nope").is_none());
        assert!(lookup("/static/../Cargo.toml").is_none());
    }

    /// Every relative import of an embedded module (`from "./x.js"`) and every
    /// absolute one (`from "/static/ui.js"`) must itself be embedded.
    #[test]
    fn every_module_import_is_served() {
        for (path, content_type, body) in FILES {
            if *content_type != JS {
                continue;
            }
            let text = std::str::from_utf8(body).expect("utf-8 module");
            for line in text.lines() {
                let Some(at) = line.find("from \"") else {
                    continue;
                };
                let rest = &line[at + 6..];
                let Some(end) = rest.find('"') else { continue };
                let spec = &rest[..end];
                let dir = &path[..path.rfind('/').unwrap() + 1];
                let target = if let Some(rel) = spec.strip_prefix("./") {
                    format!("{dir}{rel}")
                } else if spec.starts_with("../") {
                    resolve_relative(dir, spec)
                } else if spec.starts_with('/') {
                    spec.to_string()
                } else {
                    continue; // bare specifiers are loaded only on demand (msgpack)
                };
                assert!(
                    lookup(&target).is_some(),
                    "{path} imports {spec}, which is not embedded"
                );
            }
        }
    }

    /// `dir` (ending in `/`) joined with a `../`-relative specifier.
    fn resolve_relative(dir: &str, spec: &str) -> String {
        let mut parts: Vec<&str> = dir.trim_end_matches('/').split('/').collect();
        let mut rest = spec;
        while let Some(r) = rest.strip_prefix("../") {
            parts.pop();
            rest = r;
        }
        format!("{}/{rest}", parts.join("/"))
    }

    #[test]
    fn cors_allows_any_origin_without_a_list_and_echoes_listed_ones() {
        let mut config = Config::default();
        assert_eq!(
            cors_headers(&config, Some("https://shop.example")),
            [("Access-Control-Allow-Origin", "*".to_owned())]
        );
        assert_eq!(
            cors_headers(&config, None),
            [("Access-Control-Allow-Origin", "*".to_owned())]
        );
        config.allowed_origins = Some(vec!["https://shop.example/".into()]);
        assert_eq!(
            cors_headers(&config, Some("https://Shop.Example")),
            [
                ("Vary", "Origin".to_owned()),
                (
                    "Access-Control-Allow-Origin",
                    "https://Shop.Example".to_owned()
                )
            ]
        );
        assert_eq!(
            cors_headers(&config, Some("https://evil.example")),
            [("Vary", "Origin".to_owned())]
        );
        assert_eq!(cors_headers(&config, None), [("Vary", "Origin".to_owned())]);
    }

    /// Pages reference only embedded stylesheets and scripts.
    #[test]
    fn page_links_are_served() {
        for page in ["/", "/console"] {
            let text = std::str::from_utf8(lookup(page).unwrap().body).unwrap();
            for attr in ["href=\"/", "src=\"/"] {
                for (at, _) in text.match_indices(attr) {
                    let rest = &text[at + attr.len() - 1..];
                    let target = &rest[..rest.find('"').unwrap()];
                    if target.starts_with("/static/") || target.starts_with("/sdk/") {
                        assert!(
                            lookup(target).is_some(),
                            "{page} links {target}, which is not embedded"
                        );
                    }
                }
            }
        }
    }
}
