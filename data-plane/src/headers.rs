//! Which header fields cross the gateway, both ways, as RFC 9110 §7.6.1 asks of a proxy:
//! hop-by-hop fields (and those a `connection` field names) stop here, end-to-end ones go
//! on. The gateway owns a few fields and sets them itself, whatever either side sent:
//! on requests the credential (`authorization`, its own `__Host-gw_*` cookies, its CSRF
//! and delivery headers), the identity it vouches for (`x-tenant-id` as validated,
//! `x-principal-id`), the forwarding fields a client could spoof (`forwarded`,
//! `x-forwarded-*`, `x-real-ip`), its correlation and trace headers, its signed identity
//! assertion (`x-gateway-assertion`); on answers the
//! correlation and trace headers, and a `set-cookie` may never set one of the gateway's
//! own cookies. Both ways get `via` (§7.6.3). Each route class may remove or add fields
//! ([`HeaderPolicy`], from `--request-header-*` and `--response-header-*`).

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};

/// What the gateway calls itself in `via`.
const VIA: HeaderValue = HeaderValue::from_static("1.1 gateway");
/// The prefix of the gateway's own cookies (`gateway_edge::http::ACCESS_COOKIE` and the
/// others), matched without regard to case as browsers match `__Host-`.
const OWN_COOKIE_PREFIX: &[u8] = b"__host-gw_";

/// Hop-by-hop fields (RFC 9110 §7.6.1, and `keep-alive` and `proxy-connection` of older
/// peers), the framing a hop sets for itself (`content-length`, `transfer-encoding`,
/// `host`), and the proxy's own authentication fields.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        *name,
        header::CONNECTION
            | header::TE
            | header::TRANSFER_ENCODING
            | header::UPGRADE
            | header::TRAILER
            | header::PROXY_AUTHORIZATION
            | header::PROXY_AUTHENTICATE
            | header::CONTENT_LENGTH
            | header::HOST
    ) || matches!(name.as_str(), "keep-alive" | "proxy-connection")
}

/// Request fields the gateway owns: never passed on as the client sent them.
fn owned_on_requests(name: &HeaderName) -> bool {
    matches!(
        *name,
        header::AUTHORIZATION | header::FORWARDED | header::VIA | header::COOKIE
    ) || matches!(
        name.as_str(),
        "x-tenant-id"
            | "x-principal-id"
            | "x-correlation-id"
            | "traceparent"
            | "x-forwarded-for"
            | "x-forwarded-host"
            | "x-forwarded-proto"
            | "x-real-ip"
            | "x-csrf-token"
            | "x-token-delivery"
            | "x-gateway-assertion"
    )
}

/// Answer fields the gateway owns.
fn owned_on_answers(name: &HeaderName) -> bool {
    *name == header::VIA
        || matches!(
            name.as_str(),
            "x-correlation-id" | "traceparent" | "x-gateway-assertion"
        )
}

/// Whether a field is one the gateway sets itself (a route class may not remove or add it).
pub fn owned(name: &HeaderName) -> bool {
    hop_by_hop(name) || owned_on_requests(name) || owned_on_answers(name)
}

/// Whether a `connection` field of `headers` lists a token other than `keep-alive` (the
/// usual one, naming a field that is hop-by-hop anyway). When none does, no field need be
/// looked up in them.
fn connection_names_fields(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|value| {
        value.as_bytes().split(|b| *b == b',').any(|token| {
            let token = token.trim_ascii();
            !token.is_empty() && !token.eq_ignore_ascii_case(b"keep-alive")
        })
    })
}

/// Whether a `connection` field of `headers` lists `name`: hop-by-hop for this message
/// (RFC 9110 §7.6.1). Compared as bytes, without making a name of each token.
fn named_by_connection(headers: &HeaderMap, name: &HeaderName) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|value| {
        value.as_bytes().split(|b| *b == b',').any(|token| {
            token
                .trim_ascii()
                .eq_ignore_ascii_case(name.as_str().as_bytes())
        })
    })
}

/// Fields removed and added for one route class.
#[derive(Clone, Debug, Default)]
pub struct HeaderPolicy {
    pub remove_request: Vec<HeaderName>,
    pub add_request: Vec<(HeaderName, HeaderValue)>,
    pub remove_response: Vec<HeaderName>,
    pub add_response: Vec<(HeaderName, HeaderValue)>,
}

/// The policies of the forwarded route classes.
#[derive(Clone, Debug, Default)]
pub struct HeaderPolicies {
    pub query: HeaderPolicy,
    pub runner: HeaderPolicy,
}

impl HeaderPolicies {
    /// Reads `class:name` (removals) and `class:name:value` (additions) settings; the
    /// error names the bad entry.
    pub fn parse(
        remove_request: &[String],
        add_request: &[String],
        remove_response: &[String],
        add_response: &[String],
    ) -> Result<HeaderPolicies, String> {
        let mut policies = HeaderPolicies::default();
        for (entries, adds, request) in [
            (remove_request, false, true),
            (add_request, true, true),
            (remove_response, false, false),
            (add_response, true, false),
        ] {
            for entry in entries {
                let (class, rest) = entry
                    .split_once(':')
                    .ok_or_else(|| format!("{entry:?} is not `class:name`"))?;
                let policy = match class {
                    "query" => &mut policies.query,
                    "runner" => &mut policies.runner,
                    other => {
                        return Err(format!(
                            "{entry:?}: route class {other:?} is not one of query, runner"
                        ));
                    }
                };
                let (name, value) = match (adds, rest.split_once(':')) {
                    (true, Some((name, value))) => (name, Some(value.trim())),
                    (true, None) => return Err(format!("{entry:?} is not `class:name:value`")),
                    (false, _) => (rest, None),
                };
                let name = HeaderName::from_bytes(name.trim().as_bytes())
                    .map_err(|_| format!("{entry:?}: {name:?} is not a field name"))?;
                if owned(&name) {
                    return Err(format!(
                        "{entry:?}: the gateway sets {name} itself; it cannot be removed or added"
                    ));
                }
                match (value, request) {
                    (Some(value), request) => {
                        let value = HeaderValue::from_str(value)
                            .map_err(|_| format!("{entry:?}: {value:?} is not a field value"))?;
                        if request {
                            policy.add_request.push((name, value));
                        } else {
                            policy.add_response.push((name, value));
                        }
                    }
                    (None, true) => policy.remove_request.push(name),
                    (None, false) => policy.remove_response.push(name),
                }
            }
        }
        Ok(policies)
    }
}

/// The client's fields that go upstream with a call: its end-to-end fields but those the
/// gateway owns or the class removes, its cookies but the gateway's own, its `via` with the
/// gateway appended, and the class's additions.
pub fn outgoing(client: &HeaderMap, policy: &HeaderPolicy) -> Vec<(HeaderName, HeaderValue)> {
    let connection = connection_names_fields(client);
    let mut out = Vec::with_capacity(client.len() + policy.add_request.len() + 1);
    for (name, value) in client {
        if hop_by_hop(name)
            || owned_on_requests(name)
            || (connection && named_by_connection(client, name))
            || policy.remove_request.contains(name)
        {
            continue;
        }
        out.push((name.clone(), value.clone()));
    }
    if let Some(cookies) = foreign_cookies(client) {
        out.push((header::COOKIE, cookies));
    }
    out.push((header::VIA, appended_via(client)));
    out.extend(policy.add_request.iter().cloned());
    out
}

/// Fields of the gRPC protocol itself, which each hop sets for its own call.
fn grpc_protocol(name: &HeaderName) -> bool {
    name.as_str().starts_with("grpc-")
        || matches!(
            *name,
            header::CONTENT_TYPE | header::USER_AGENT | header::DATE | header::ACCEPT_ENCODING
        )
}

/// The metadata of a client's gRPC call that goes on to the aggregate: its end-to-end
/// fields, as for HTTP ([`outgoing`]), without the protocol's own (`grpc-*`,
/// `content-type`, `user-agent`): the gateway's call sets those. Binary (`-bin`) metadata
/// passes as it is.
pub fn grpc_request_metadata(client: &HeaderMap) -> HeaderMap {
    grpc_end_to_end(client, owned_on_requests)
}

/// The metadata of an aggregate's answer relayed to the client: end-to-end fields without
/// the protocol's own and those the gateway stamps itself (correlation id, trace).
pub fn grpc_answer_metadata(upstream: &HeaderMap) -> HeaderMap {
    grpc_end_to_end(upstream, owned_on_answers)
}

/// `metadata` without hop-by-hop fields (and those its `connection` names), the gRPC
/// protocol's own, and those `owned` says the gateway sets on this side.
fn grpc_end_to_end(metadata: &HeaderMap, owned: fn(&HeaderName) -> bool) -> HeaderMap {
    let connection = connection_names_fields(metadata);
    let mut out = HeaderMap::with_capacity(metadata.len());
    for (name, value) in metadata {
        if !(hop_by_hop(name)
            || owned(name)
            || (connection && named_by_connection(metadata, name))
            || grpc_protocol(name))
        {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// The client's cookies without the gateway's own, as one `cookie` field; `None` when none
/// is left.
fn foreign_cookies(client: &HeaderMap) -> Option<HeaderValue> {
    let mut kept: Vec<&[u8]> = Vec::new();
    for value in client.get_all(header::COOKIE) {
        for pair in value.as_bytes().split(|b| *b == b';') {
            let pair = pair.trim_ascii();
            if !pair.is_empty() && !own_cookie(pair) {
                kept.push(pair);
            }
        }
    }
    if kept.is_empty() {
        return None;
    }
    HeaderValue::from_bytes(&kept.join(&b"; "[..])).ok()
}

/// Whether a `name=value` cookie pair (or a `set-cookie` value) names a gateway cookie.
fn own_cookie(pair: &[u8]) -> bool {
    let name = pair
        .split(|b| *b == b'=')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    name.len() >= OWN_COOKIE_PREFIX.len()
        && name[..OWN_COOKIE_PREFIX.len()].eq_ignore_ascii_case(OWN_COOKIE_PREFIX)
}

/// `via` of `headers` with the gateway appended (RFC 9110 §7.6.3).
fn appended_via(headers: &HeaderMap) -> HeaderValue {
    let earlier: Vec<&[u8]> = headers
        .get_all(header::VIA)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    if earlier.is_empty() {
        return VIA;
    }
    let mut joined = earlier.join(&b", "[..]);
    joined.extend_from_slice(b", ");
    joined.extend_from_slice(VIA.as_bytes());
    HeaderValue::from_bytes(&joined).unwrap_or(VIA)
}

/// The upstream's answer fields as the client gets them: end-to-end fields but those the
/// gateway owns or the class removes, never a `set-cookie` for a gateway cookie, `via`
/// appended, `x-content-type-options: nosniff` unless the upstream set it, the class's
/// additions.
pub fn relayed(mut headers: HeaderMap, policy: &HeaderPolicy) -> HeaderMap {
    // in place: a typical answer loses a field or two (`connection`), and nothing is
    // allocated for it: no second map, no list of the names to drop
    let via = appended_via(&headers);
    if connection_names_fields(&headers) {
        // first what `connection` names, while it is there to be read: one pass over the
        // fields (a hostile answer's long `connection` is read once per field, not once
        // per field per removal)
        let named: Vec<HeaderName> = headers
            .keys()
            .filter(|name| !hop_by_hop(name) && named_by_connection(&headers, name))
            .cloned()
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    // what stays to drop is a few names at most (hop-by-hop, owned, the class's removals)
    while let Some(name) = headers
        .keys()
        .find(|name| {
            hop_by_hop(name) || owned_on_answers(name) || policy.remove_response.contains(name)
        })
        .cloned()
    {
        headers.remove(name);
    }
    if headers
        .get_all(header::SET_COOKIE)
        .iter()
        .any(|value| own_cookie(value.as_bytes()))
        && let header::Entry::Occupied(cookies) = headers.entry(header::SET_COOKIE)
    {
        tracing::warn!("an upstream tried to set a gateway cookie; dropped");
        metrics::counter!("gateway_upstream_cookies_refused_total").increment(1);
        let (_, values) = cookies.remove_entry_mult();
        let kept: Vec<HeaderValue> = values.filter(|v| !own_cookie(v.as_bytes())).collect();
        for value in kept {
            headers.append(header::SET_COOKIE, value);
        }
    }
    headers.insert(header::VIA, via);
    if !headers.contains_key(header::X_CONTENT_TYPE_OPTIONS) {
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
    }
    for (name, value) in &policy.add_response {
        headers.append(name.clone(), value.clone());
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn names(pairs: &[(HeaderName, HeaderValue)]) -> Vec<String> {
        pairs
            .iter()
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
            .collect()
    }

    #[test]
    fn requests_keep_end_to_end_fields_and_lose_what_the_gateway_owns() {
        let client = map(&[
            ("accept", "application/json"),
            ("if-match", "\"v3\""),
            ("idempotency-key", "k-1"),
            ("x-custom", "1"),
            ("x-drop-me", "secret"),
            ("connection", "keep-alive, x-drop-me"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("authorization", "Bearer t"),
            ("x-principal-id", "someone-else"),
            ("x-tenant-id", "acme"),
            ("x-forwarded-for", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("x-correlation-id", "c"),
            ("traceparent", "00-x"),
            ("x-csrf-token", "t"),
            ("cookie", "__Host-gw_access=tok; theme=dark"),
            ("cookie", "__HOST-GW_refresh=r; lang=en"),
            ("via", "1.0 corp-proxy"),
            ("host", "evil"),
            ("content-length", "9"),
        ]);
        let policy = HeaderPolicy {
            remove_request: vec![HeaderName::from_static("x-custom")],
            add_request: vec![(
                HeaderName::from_static("x-env"),
                HeaderValue::from_static("prod"),
            )],
            ..HeaderPolicy::default()
        };
        assert_eq!(
            names(&outgoing(&client, &policy)),
            vec![
                "accept: application/json",
                "if-match: \"v3\"",
                "idempotency-key: k-1",
                "cookie: theme=dark; lang=en",
                "via: 1.0 corp-proxy, 1.1 gateway",
                "x-env: prod",
            ]
        );
        // only gateway cookies: no cookie field at all
        let client = map(&[("cookie", "__Host-gw_csrf=c")]);
        assert_eq!(
            names(&outgoing(&client, &HeaderPolicy::default())),
            vec!["via: 1.1 gateway"]
        );
    }

    #[test]
    fn every_connection_field_is_read_for_the_names_it_lists() {
        // the usual `keep-alive` alone names nothing to look up; a second field does
        let upstream = map(&[
            ("connection", "keep-alive"),
            ("x-a", "1"),
            ("connection", " X-A ,"),
            ("x-b", "2"),
            ("close", "3"),
        ]);
        let out = relayed(upstream, &HeaderPolicy::default());
        assert!(!out.contains_key("x-a") && !out.contains_key(header::CONNECTION));
        assert_eq!(out.get("x-b").unwrap(), "2");
        assert_eq!(out.get("close").unwrap(), "3");
        let upstream = map(&[("connection", "close"), ("close", "3"), ("x-b", "2")]);
        let out = relayed(upstream, &HeaderPolicy::default());
        assert!(!out.contains_key("close"), "{out:?}");
        let client = map(&[("connection", "keep-alive"), ("x-b", "2")]);
        assert_eq!(
            names(&outgoing(&client, &HeaderPolicy::default())),
            vec!["x-b: 2", "via: 1.1 gateway"]
        );
    }

    #[test]
    fn a_connection_field_naming_every_field_drops_them_all() {
        // an answer at the field limit whose `connection` names each of its fields among
        // thousands of other tokens
        let mut tokens: Vec<String> = (0..3000).map(|i| format!("t{i}")).collect();
        let mut pairs: Vec<(String, String)> = Vec::new();
        for i in 0..120 {
            pairs.push((format!("x-f{i}"), "1".to_string()));
            tokens.push(format!("X-F{i}"));
        }
        pairs.push(("x-keep".to_string(), "1".to_string()));
        pairs.push(("connection".to_string(), tokens.join(", ")));
        let borrowed: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let out = relayed(map(&borrowed), &HeaderPolicy::default());
        let mut left: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, vec!["via", "x-content-type-options", "x-keep"]);
    }

    #[test]
    fn answers_keep_end_to_end_fields_and_never_set_gateway_cookies() {
        let upstream = map(&[
            ("location", "/orders/7"),
            ("set-cookie", "session=abc; Path=/"),
            ("set-cookie", "__Host-gw_access=forged; Path=/; Secure"),
            ("set-cookie", "__host-GW_refresh=forged"),
            ("cache-control", "no-store"),
            ("etag", "\"v4\""),
            ("www-authenticate", "Bearer"),
            ("retry-after", "3"),
            ("vary", "accept"),
            ("x-upstream", "1"),
            ("server", "nginx"),
            ("connection", "close, x-upstream-hop"),
            ("x-upstream-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("x-correlation-id", "upstream-made"),
            ("traceparent", "00-upstream"),
        ]);
        let policy = HeaderPolicy {
            remove_response: vec![HeaderName::from_static("server")],
            add_response: vec![(
                HeaderName::from_static("strict-transport-security"),
                HeaderValue::from_static("max-age=63072000"),
            )],
            ..HeaderPolicy::default()
        };
        let out = relayed(upstream, &policy);
        let mut got: Vec<String> = out
            .iter()
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
            .collect();
        got.sort();
        let mut want = vec![
            "location: /orders/7",
            "set-cookie: session=abc; Path=/",
            "cache-control: no-store",
            "etag: \"v4\"",
            "www-authenticate: Bearer",
            "retry-after: 3",
            "vary: accept",
            "x-upstream: 1",
            "via: 1.1 gateway",
            "x-content-type-options: nosniff",
            "strict-transport-security: max-age=63072000",
        ];
        want.sort();
        assert_eq!(got, want);
        // the upstream's own nosniff (or another value) is kept
        let out = relayed(map(&[("x-content-type-options", "nosniff")]), &policy);
        assert_eq!(out.get_all("x-content-type-options").iter().count(), 1);
    }

    #[test]
    fn grpc_metadata_keeps_end_to_end_fields_both_ways() {
        let client = map(&[
            ("x-request-tag", "t-1"),
            ("x-blob-bin", "AAEC"),
            ("authorization", "Bearer secret"),
            ("x-principal-id", "usr_forged"),
            ("x-tenant-id", "other"),
            ("grpc-timeout", "5S"),
            ("grpc-accept-encoding", "gzip"),
            ("content-type", "application/grpc"),
            ("user-agent", "grpc-python/1.85"),
            ("te", "trailers"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
        ]);
        let forwarded = grpc_request_metadata(&client);
        let mut names: Vec<&str> = forwarded.keys().map(|n| n.as_str()).collect();
        names.sort();
        assert_eq!(names, ["x-blob-bin", "x-request-tag"]);
        let answer = map(&[
            ("x-aggregate-node", "a-1"),
            ("x-correlation-id", "upstream-made-up"),
            ("traceparent", "00-upstream"),
            ("grpc-status", "0"),
            ("content-type", "application/grpc"),
            ("date", "now"),
        ]);
        let relayed = grpc_answer_metadata(&answer);
        let names: Vec<&str> = relayed.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["x-aggregate-node"]);
    }

    #[test]
    fn policies_name_a_class_and_never_touch_what_the_gateway_owns() {
        let policies = HeaderPolicies::parse(
            &["runner:x-debug".into()],
            &["query:x-env: prod".into()],
            &["query:server".into()],
            &["runner:cache-control:no-store".into()],
        )
        .unwrap();
        assert_eq!(
            policies.runner.remove_request,
            vec![HeaderName::from_static("x-debug")]
        );
        assert_eq!(policies.query.add_request[0].1, "prod");
        assert_eq!(policies.query.remove_response.len(), 1);
        assert_eq!(policies.runner.add_response[0].1, "no-store");
        for (remove, add) in [
            (vec!["x-debug".to_string()], vec![]),
            (vec!["commands:x-debug".to_string()], vec![]),
            (vec!["query:x-principal-id".to_string()], vec![]),
            (vec!["query:bad name".to_string()], vec![]),
            (vec![], vec!["query:x-tenant-id:other".to_string()]),
            (vec![], vec!["query:authorization:Bearer x".to_string()]),
            (vec![], vec!["query:x-env".to_string()]),
            (vec![], vec!["query:x-env:a\nb".to_string()]),
        ] {
            assert!(
                HeaderPolicies::parse(&remove, &add, &[], &[]).is_err(),
                "{remove:?} {add:?}"
            );
        }
    }
}
