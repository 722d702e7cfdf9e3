//! `kubectl get` asks for a Table (`Accept: ...;as=Table`): the name, a CRD's printer
//! columns evaluated with the small JSONPath subset they use, and the age.

use serde_json::{Value, json};

use super::store::ResourceInfo;

/// Evaluates `.a.b`, `.a[0].b` and `.a[?(@.k=="v")].b` against `object`.
pub fn json_path(object: &Value, path: &str) -> Value {
    let mut current = object.clone();
    let mut rest = path.trim_start_matches('.');
    while !rest.is_empty() && !current.is_null() {
        if let Some(stripped) = rest.strip_prefix('[') {
            let end = stripped.find(']').unwrap_or(stripped.len());
            let inner = &stripped[..end];
            current = if let Some(filter) = inner.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')')) {
                let (field, value) = filter.split_once("==").unwrap_or((filter, ""));
                let value = value.trim_matches('"');
                current
                    .as_array()
                    .and_then(|items| items.iter().find(|i| i[field].as_str() == Some(value)))
                    .cloned()
                    .unwrap_or(Value::Null)
            } else {
                inner.parse::<usize>().ok().and_then(|i| current.get(i).cloned()).unwrap_or(Value::Null)
            };
            rest = stripped.get(end + 1..).unwrap_or_default().trim_start_matches('.');
        } else {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            current = current.get(&rest[..end]).cloned().unwrap_or(Value::Null);
            rest = rest[end..].trim_start_matches('.');
        }
    }
    current
}

/// How long ago an RFC 3339 time was, the way kubectl shows ages ("5m", "3h").
fn age(timestamp: &str) -> String {
    let Ok(then) = humantime::parse_rfc3339(timestamp) else { return "<unknown>".into() };
    let secs = std::time::SystemTime::now().duration_since(then).map(|d| d.as_secs()).unwrap_or(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

pub fn table(info: &ResourceInfo, items: &[Value], resource_version: u64) -> Value {
    let mut columns =
        vec![json!({"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0})];
    let custom: Vec<&(String, String, String)> =
        if info.columns.is_empty() { Vec::new() } else { info.columns.iter().collect() };
    for (name, kind, _) in &custom {
        columns.push(json!({"name": name, "type": if kind == "date" { "string" } else { kind.as_str() }, "format": "", "description": name, "priority": 0}));
    }
    let default_age = info.columns.iter().all(|(_, _, path)| path != ".metadata.creationTimestamp");
    if default_age {
        columns.push(json!({"name": "Age", "type": "string", "format": "", "description": "Age", "priority": 0}));
    }
    let rows: Vec<Value> = items
        .iter()
        .map(|item| {
            let mut cells = vec![item["metadata"]["name"].clone()];
            for (_, kind, path) in &custom {
                let value = json_path(item, path);
                cells.push(match (kind.as_str(), value.as_str()) {
                    ("date", Some(ts)) => json!(age(ts)),
                    _ => value,
                });
            }
            if default_age {
                cells.push(json!(age(item["metadata"]["creationTimestamp"].as_str().unwrap_or_default())));
            }
            let metadata = item["metadata"].clone();
            json!({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": metadata}})
        })
        .collect();
    json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version.to_string()},
        "columnDefinitions": columns, "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluates_the_paths_printer_columns_use() {
        let object = json!({"status": {"holders": [{"pod": "web-0"}], "conditions": [
            {"type": "Synced", "status": "False"}, {"type": "Ready", "status": "True"}], "depth": 3}});
        assert_eq!(json_path(&object, ".status.holders[0].pod"), json!("web-0"));
        assert_eq!(json_path(&object, r#".status.conditions[?(@.type=="Ready")].status"#), json!("True"));
        assert_eq!(json_path(&object, ".status.depth"), json!(3));
        assert_eq!(json_path(&object, ".status.missing[0].x"), Value::Null);
    }
}
