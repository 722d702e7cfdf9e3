//! Structural-schema validation and defaulting of custom resources, as the API server
//! does with a CRD's `openAPIV3Schema`: types, required fields, ranges, patterns, enums,
//! defaults, and unknown fields (rejected under `fieldValidation=Strict`, which kubectl
//! sends, pruned otherwise). CEL rules (`x-kubernetes-validations`) are not evaluated.

use serde_json::{Map, Value};

/// Applies defaults and validates `value` against `schema`; returns what is wrong.
pub fn check(schema: &Value, value: &mut Value, strict: bool) -> Vec<String> {
    let mut errors = Vec::new();
    walk(schema, value, "", strict, &mut errors);
    errors
}

fn walk(schema: &Value, value: &mut Value, at: &str, strict: bool, errors: &mut Vec<String>) {
    if value.is_null() {
        if schema["nullable"] != Value::Bool(true) && !at.is_empty() {
            errors.push(format!("{at}: Invalid value: null"));
        }
        return;
    }
    if schema["x-kubernetes-preserve-unknown-fields"] == Value::Bool(true) && schema.get("properties").is_none() {
        return;
    }
    let type_ok = match schema["type"].as_str() {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        _ => true,
    };
    if !type_ok {
        errors
            .push(format!("{at}: Invalid value: {value}: must be of type {}", schema["type"].as_str().unwrap_or("?")));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        errors.push(format!("{at}: Unsupported value: {value}: supported values: {}", Value::Array(allowed.clone())));
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = schema["minimum"].as_f64()
            && n < min
        {
            errors.push(format!("{at}: Invalid value: {n}: should be greater than or equal to {min}"));
        }
        if let Some(max) = schema["maximum"].as_f64()
            && n > max
        {
            errors.push(format!("{at}: Invalid value: {n}: should be less than or equal to {max}"));
        }
    }
    if let (Some(s), Some(pattern)) = (value.as_str(), schema["pattern"].as_str())
        && !regex::Regex::new(pattern).is_ok_and(|re| re.is_match(s))
    {
        errors.push(format!("{at}: Invalid value: {s:?}: should match '{pattern}'"));
    }
    if let Value::Array(items) = value
        && let Some(item_schema) = schema.get("items")
    {
        for (i, item) in items.iter_mut().enumerate() {
            walk(item_schema, item, &format!("{at}[{i}]"), strict, errors);
        }
    }
    if let Value::Object(fields) = value {
        object(schema, fields, at, strict, errors);
    }
}

fn object(schema: &Value, fields: &mut Map<String, Value>, at: &str, strict: bool, errors: &mut Vec<String>) {
    let Some(properties) = schema["properties"].as_object() else {
        if let Some(extra) = schema.get("additionalProperties").filter(|v| v.is_object()) {
            for (key, v) in fields.iter_mut() {
                walk(extra, v, &format!("{at}.{key}"), strict, errors);
            }
        }
        return;
    };
    for (name, prop) in properties {
        if !fields.contains_key(name)
            && let Some(default) = prop.get("default")
        {
            fields.insert(name.clone(), default.clone());
        }
    }
    for name in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        if !fields.contains_key(name) {
            errors.push(format!("{at}.{name}: Required value"));
        }
    }
    let unknown: Vec<String> = fields.keys().filter(|k| !properties.contains_key(*k)).cloned().collect();
    let keep_unknown = schema["x-kubernetes-preserve-unknown-fields"] == Value::Bool(true);
    for key in unknown {
        // apiVersion, kind and metadata are the server's to check at the top level.
        if keep_unknown || (at.is_empty() && ["apiVersion", "kind", "metadata"].contains(&key.as_str())) {
            continue;
        }
        if strict {
            errors.push(format!("{at}.{key}: unknown field \"{}\"", key));
        } else {
            fields.remove(&key);
        }
    }
    for (name, prop) in properties {
        if let Some(v) = fields.get_mut(name) {
            walk(prop, v, &format!("{at}.{name}"), strict, errors);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema() -> Value {
        json!({"type": "object", "properties": {"spec": {"type": "object", "required": ["size"], "properties": {
            "size": {"type": "integer", "minimum": 1, "maximum": 10},
            "mode": {"type": "string", "enum": ["a", "b"], "default": "a"},
            "ttl": {"type": "string", "pattern": "^[0-9]+s$", "nullable": true}}}}})
    }

    #[test]
    fn defaults_and_validates_like_the_api_server() {
        let mut ok = json!({"spec": {"size": 3}});
        assert!(check(&schema(), &mut ok, true).is_empty());
        assert_eq!(ok["spec"]["mode"], "a", "defaulted");
        let mut bad = json!({"spec": {"size": 0, "mode": "c", "ttl": "soon", "extra": 1}});
        let errors = check(&schema(), &mut bad, true);
        assert_eq!(errors.len(), 4, "{errors:?}");
        let mut missing = json!({"spec": {"extra": 1}});
        let errors = check(&schema(), &mut missing, false);
        assert_eq!(errors, [".spec.size: Required value"]);
        assert!(missing["spec"].get("extra").is_none(), "unknown fields pruned when not strict");
    }
}
