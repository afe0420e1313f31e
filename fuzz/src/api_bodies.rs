//! The API's JSON request bodies (`POST /api/v1/maintenance`, the only route that takes one),
//! through the real router in process: any body gets a 200 exactly when the request shape in
//! `proto/api/openapi.json` accepts it (and the handler's own rule: `machine` is a minion id,
//! not `""` or `*`), and then the daemon is asked for exactly that change; anything else is a
//! 400 or 422 with a JSON `{"error": ...}`, and nothing is asked. Never a 5xx.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use hyper::service::Service;
use hyper_util::service::TowerToHyperService;
use saltpeter::api::{self, AppState, Snapshot};
use saltpeter::config::{Loader, Maintenance};
use saltpeter::control::{Command, Control, MaintenanceChange};
use saltpeter::history::{History, MaintenanceState, Retention};
use saltpeter::metrics::Metrics;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

use super::input::Src;

/// The router on loopback without tokens (mutations are open), its runtime, and the
/// maintenance changes the stand-in daemon loop was asked for.
struct Api {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
    asked: Arc<Mutex<Vec<MaintenanceChange>>>,
    _snapshots: tokio::sync::watch::Sender<Arc<Snapshot>>,
}

fn api() -> &'static Api {
    static API: OnceLock<Api> = OnceLock::new();
    API.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let (control, mut commands) = Control::new(16);
        let asked = Arc::new(Mutex::new(Vec::new()));
        let log = asked.clone();
        rt.spawn(async move {
            while let Some(command) = commands.recv().await {
                if let Command::Maintenance { change, reply } = command {
                    log.lock().unwrap_or_else(|p| p.into_inner()).push(change);
                    let _ = reply.send(Ok(()));
                }
            }
        });
        let retention = Retention {
            output_cap: 1 << 20,
            max_age_days: 0,
            max_runs_per_job: 0,
        };
        let history = History::open(std::path::Path::new(":memory:"), retention)
            .expect("an in-memory history");
        let mut config = Loader::new("fuzzhost").load(&[]).config;
        config.settings.api_ws_bind_addr = "127.0.0.1".into();
        let snapshot = Snapshot {
            config: config.clone(),
            diagnostics: Vec::new(),
            maintenance: Maintenance::default(),
            switched: MaintenanceState::default(),
            changed: jiff::Timestamp::UNIX_EPOCH,
        };
        let (snapshots, rx) = tokio::sync::watch::channel(Arc::new(snapshot));
        let state = rt.block_on(async {
            AppState::new(control, history, rx, &config.settings, Metrics::default())
        });
        Api {
            rt,
            router: api::router(state),
            asked,
            _snapshots: snapshots,
        }
    })
}

/// The target: the input as a raw body, or as the recipe for a JSON object near the shape.
pub fn check(data: &[u8]) {
    let mut src = Src::new(data);
    let body = match src.below(3) {
        0 => src.rest().to_vec(),
        _ => object(&mut src).into_bytes(),
    };
    check_body(&body);
}

/// A JSON object text with keys near the documented ones (repeats allowed: a `Value` could
/// not hold them) and values of every type.
pub fn object(src: &mut Src) -> String {
    const KEYS: [&str; 6] = ["on", "machine", "On", "", "global", "machine "];
    const VALUES: [&str; 12] = [
        "true", "false", "null", "0", "1", "\"\"", "\"*\"", "\"web1\"", "[]", "{}", "\"true\"",
        "1e999",
    ];
    let mut entries = Vec::new();
    for _ in 0..src.below(4) {
        let key = match src.below(4) {
            0 => src.text(6),
            _ => src.pick(&KEYS).to_string(),
        };
        let value = match src.below(4) {
            0 => Value::String(src.text(8)).to_string(),
            _ => src.pick(&VALUES).to_string(),
        };
        entries.push(format!("{}:{value}", Value::String(key)));
    }
    format!("{{{}}}", entries.join(","))
}

/// The top-level keys of a JSON object, or `None` when it repeats one.
struct UniqueKeys(Option<BTreeSet<String>>);

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> Visitor<'de> for Keys {
            type Value = UniqueKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
                let mut keys = BTreeSet::new();
                let mut unique = true;
                while let Some(key) = map.next_key::<String>()? {
                    map.next_value::<IgnoredAny>()?;
                    unique &= keys.insert(key);
                }
                Ok(UniqueKeys(unique.then_some(keys)))
            }
        }
        d.deserialize_map(Keys)
    }
}

/// What the API must do with `body`: the change to ask for, or `None` for a refusal. The
/// request schema in `proto/api/openapi.json`: an object with a boolean `on`, an optional
/// string `machine`, nothing else; and the handler's rule that `machine` names one minion.
///
/// Where the server differs from the schema, this follows the server (each is reported, and
/// pinned in `tests/it/fuzz_props.rs`): a repeated key is refused (JSON leaves it undefined),
/// `"machine": null` means "left out", and `[on, machine]` is taken as the object (serde
/// reads a struct from the list of its fields, in order).
pub fn expected(body: &[u8]) -> Option<MaintenanceChange> {
    let value = serde_json::from_slice::<Value>(body).ok()?;
    let (on, machine) = match &value {
        Value::Object(fields) => {
            serde_json::from_slice::<UniqueKeys>(body).ok()?.0?;
            if fields.keys().any(|k| k != "on" && k != "machine") {
                return None;
            }
            (fields.get("on")?, fields.get("machine"))
        }
        Value::Array(items) if items.len() == 2 => (&items[0], Some(&items[1])),
        _ => return None,
    };
    let machine = match machine {
        None | Some(Value::Null) => None,
        Some(Value::String(m)) if !m.is_empty() && m != "*" => Some(m.clone()),
        Some(_) => return None,
    };
    Some(MaintenanceChange {
        machine,
        on: on.as_bool()?,
    })
}

/// Posts `body` to the real router and checks the answer against [`expected`].
pub fn check_body(body: &[u8]) {
    let api = api();
    let asked = || api.asked.lock().unwrap_or_else(|p| p.into_inner());
    asked().clear();
    let request = Request::post("/api/v1/maintenance")
        .header("content-type", "application/json")
        .body(Body::from(body.to_vec()))
        .expect("a request");
    let service = TowerToHyperService::new(api.router.clone());
    let (status, answer) = api.rt.block_on(async {
        let response = service
            .call(request)
            .await
            .expect("the router is infallible");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("a body in memory");
        (status, bytes)
    });
    let shown = String::from_utf8_lossy(body);
    let answer: Value = serde_json::from_slice(&answer)
        .unwrap_or_else(|e| panic!("{status} for {shown:?} is not JSON: {e}"));
    match expected(body) {
        Some(change) => {
            assert_eq!(status, StatusCode::OK, "{shown:?} → {answer}");
            assert_eq!(*asked(), [change], "{shown:?}");
            assert!(answer["global"].is_boolean(), "{answer}");
            assert!(answer["machines"].is_array(), "{answer}");
        }
        None => {
            assert!(
                matches!(
                    status,
                    StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY
                ),
                "{shown:?} → {status} {answer}"
            );
            assert!(answer["error"].is_string(), "{shown:?} → {answer}");
            assert!(asked().is_empty(), "{shown:?} asked {:?}", *asked());
        }
    }
}
