//! The REST API against its OpenAPI document (`proto/api/openapi.json`): every route the
//! server defines is documented, and real responses match the documented schemas.

use serde_json::Value;

use crate::support::{Daemon, dead_master, free_port, write};

const SPEC: &str = include_str!("../../proto/api/openapi.json");

fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => &spec["components"]["schemas"][r.trim_start_matches("#/components/schemas/")],
        None => schema,
    }
}

/// Every property an object schema documents, through `$ref` and `allOf`.
fn properties(spec: &Value, schema: &Value, out: &mut Vec<String>) {
    let schema = resolve(spec, schema);
    for s in schema["allOf"].as_array().into_iter().flatten() {
        properties(spec, s, out);
    }
    out.extend(
        schema["properties"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k.clone()),
    );
}

/// Checks `v` against an OpenAPI 3.0 schema (the subset the document uses).
fn check(spec: &Value, schema: &Value, v: &Value, at: &str, errors: &mut Vec<String>) {
    check_inner(spec, schema, v, at, errors, true);
}

fn check_inner(
    spec: &Value,
    schema: &Value,
    v: &Value,
    at: &str,
    errors: &mut Vec<String>,
    closed: bool,
) {
    let schema = resolve(spec, schema);
    if v.is_null() && schema["nullable"] == true {
        return;
    }
    if let Some(all) = schema["allOf"].as_array() {
        // Each part checks its own fields; undocumented ones are those no part names.
        for s in all {
            check_inner(spec, s, v, at, errors, false);
        }
        let mut known = Vec::new();
        properties(spec, schema, &mut known);
        for k in v.as_object().into_iter().flatten().map(|(k, _)| k) {
            if !known.contains(k) {
                errors.push(format!("{at}: undocumented field {k}"));
            }
        }
        return;
    }
    if let Some(any) = schema["oneOf"].as_array() {
        let ok = any.iter().any(|s| {
            let mut e = Vec::new();
            check(spec, s, v, at, &mut e);
            e.is_empty()
        });
        if !ok {
            errors.push(format!("{at}: matches no alternative: {v}"));
        }
        return;
    }
    let ty = schema["type"].as_str().unwrap_or("");
    let type_ok = match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        _ => true,
    };
    if !type_ok {
        errors.push(format!("{at}: expected {ty}, found {v}"));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(v)
    {
        errors.push(format!("{at}: {v} is not one of {allowed:?}"));
    }
    if let Some(items) = v.as_array() {
        for (i, item) in items.iter().enumerate() {
            check(spec, &schema["items"], item, &format!("{at}[{i}]"), errors);
        }
    }
    if let Some(map) = v.as_object() {
        for req in schema["required"].as_array().into_iter().flatten() {
            let key = req.as_str().unwrap();
            if !map.contains_key(key) {
                errors.push(format!("{at}: missing {key}"));
            }
        }
        let props = schema["properties"].as_object();
        for (k, item) in map {
            match props.and_then(|p| p.get(k)) {
                Some(s) => check(spec, s, item, &format!("{at}.{k}"), errors),
                None => match &schema["additionalProperties"] {
                    s if s.is_object() => check(spec, s, item, &format!("{at}.{k}"), errors),
                    // Objects with documented properties list them all.
                    _ if closed && props.is_some() => {
                        errors.push(format!("{at}: undocumented field {k}"))
                    }
                    _ => {}
                },
            }
        }
    }
}

#[test]
fn every_route_is_documented() {
    let spec: Value = serde_json::from_str(SPEC).unwrap();
    let paths = spec["paths"].as_object().unwrap();
    let mut routes = Vec::new();
    for file in ["src/api/mod.rs", "src/api/rest.rs", "src/api/legacy.rs"] {
        let text = std::fs::read_to_string(file).unwrap();
        for piece in text.split(".route(").skip(1) {
            let path = piece.trim_start().trim_start_matches('"');
            routes.push(path[..path.find('"').unwrap()].to_string());
        }
    }
    assert!(routes.len() >= 20, "{routes:?}");
    assert!(
        routes.iter().any(|r| r == "/api/v1/jobs/{job}/slots"),
        "{routes:?}"
    );
    for r in &routes {
        assert!(
            paths.contains_key(r),
            "route {r} is not in proto/api/openapi.json"
        );
    }
    for p in paths.keys() {
        assert!(routes.contains(p), "{p} is documented but not served");
    }
}

#[test]
fn responses_match_the_documented_schemas() {
    let spec: Value = serde_json::from_str(SPEC).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let master = dead_master(&dir.path().join("salt"), free_port());
    write(
        dir.path(),
        "01-settings.yaml",
        &format!(
            "saltpeter_config:\n  salt_master_config: {}\n  logdir: {}\n",
            master.display(),
            dir.path().join("log").display()
        ),
    );
    write(
        dir.path(),
        "jobs.yaml",
        "j:\n  sec: 0\n  min: 0\n  hour: 0\n  dom: 1\n  mon: 1\n  dow: '*'\n  year: 2099\n  targets: [a, b]\n  target_type: list\n  command: echo hi\n  success_threshold: 0.5\n",
    );
    let mut d = Daemon::start(dir.path());
    d.wait_api();
    let (_, started) = d.call("POST", "/api/v1/jobs/j/run", None);
    let instance = started["instance"].as_str().unwrap().to_string();
    let cases: Vec<(&str, String, &str, Option<&str>, u16)> = vec![
        ("/api/v1/jobs", "/api/v1/jobs".into(), "get", None, 200),
        (
            "/api/v1/jobs/{job}",
            "/api/v1/jobs/j".into(),
            "get",
            None,
            200,
        ),
        (
            "/api/v1/jobs/{job}",
            "/api/v1/jobs/zz".into(),
            "get",
            None,
            404,
        ),
        (
            "/api/v1/jobs/{job}/runs",
            "/api/v1/jobs/j/runs?limit=1".into(),
            "get",
            None,
            200,
        ),
        (
            "/api/v1/jobs/{job}/slots",
            "/api/v1/jobs/j/slots".into(),
            "get",
            None,
            200,
        ),
        (
            "/api/v1/jobs/{job}/slots",
            "/api/v1/jobs/j/slots?state=manual&since=2020-01-01T00:00:00Z&limit=1".into(),
            "get",
            None,
            200,
        ),
        (
            "/api/v1/jobs/{job}/slots",
            "/api/v1/jobs/j/slots?state=bogus".into(),
            "get",
            None,
            400,
        ),
        (
            "/api/v1/jobs/{job}/slots",
            "/api/v1/jobs/zz/slots".into(),
            "get",
            None,
            404,
        ),
        (
            "/api/v1/jobs/{job}/deliveries",
            "/api/v1/jobs/j/deliveries?limit=5".into(),
            "get",
            None,
            200,
        ),
        (
            "/api/v1/deliveries",
            "/api/v1/deliveries?job=j&before=100".into(),
            "get",
            None,
            200,
        ),
        (
            "/api/v1/deliveries",
            "/api/v1/deliveries?limit=many".into(),
            "get",
            None,
            400,
        ),
        (
            "/api/v1/runs/{instance}",
            format!("/api/v1/runs/{instance}"),
            "get",
            None,
            200,
        ),
        (
            "/api/v1/jobs/{job}/run",
            "/api/v1/jobs/j/run".into(),
            "post",
            None,
            409,
        ),
        (
            "/api/v1/maintenance",
            "/api/v1/maintenance".into(),
            "get",
            None,
            200,
        ),
        (
            "/api/v1/maintenance",
            "/api/v1/maintenance".into(),
            "post",
            Some("{\"on\": false}"),
            200,
        ),
        (
            "/api/v1/maintenance",
            "/api/v1/maintenance".into(),
            "post",
            Some("[1]"),
            422,
        ),
        (
            "/api/v1/diagnostics",
            "/api/v1/diagnostics".into(),
            "get",
            None,
            200,
        ),
        ("/api/v1/reload", "/api/v1/reload".into(), "post", None, 200),
        ("/api/v1/status", "/api/v1/status".into(), "get", None, 200),
        (
            "/api/v1/timeline",
            "/api/v1/timeline?minutes=5".into(),
            "get",
            None,
            200,
        ),
        ("/version", "/version".into(), "get", None, 200),
        ("/config", "/config".into(), "get", None, 200),
        ("/running", "/running".into(), "get", None, 200),
        ("/ws", "/ws".into(), "get", None, 426),
        (
            "/api/v1/runs/{instance}/kill",
            format!("/api/v1/runs/{instance}/kill"),
            "post",
            None,
            200,
        ),
        (
            "/api/v1/jobs/{job}/kill",
            "/api/v1/jobs/zz/kill".into(),
            "post",
            None,
            404,
        ),
    ];
    let mut errors = Vec::new();
    for (doc_path, url, method, body, status) in cases {
        let (got, v) = d.call(&method.to_uppercase(), &url, body);
        assert_eq!(got, status, "{method} {url}: {v}");
        // The ledger's row of the manual run above is there to be checked, not an empty list.
        if url.starts_with("/api/v1/jobs/j/slots") && status == 200 {
            assert_eq!(v["slots"][0]["instance"], instance.as_str(), "{url}: {v}");
        }
        let documented = &spec["paths"][doc_path][method]["responses"][status.to_string()];
        assert!(
            documented.is_object(),
            "{method} {doc_path} {status} is not documented"
        );
        let schema = &documented["content"]["application/json"]["schema"];
        // A JSON answer without a documented schema would pass any check.
        assert!(
            v.is_string() || schema.is_object(),
            "{method} {doc_path} {status}: no JSON schema documented"
        );
        check(&spec, schema, &v, &format!("{method} {url}"), &mut errors);
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}
