//! JSON bodies and import rows read strictly: a key twice in one object is refused.
//!
//! `serde_json::Value` keeps the last of two equal keys without a word, while a proxy,
//! a WAF or the client's own tooling may read the first: the same bytes would mean two
//! products. Order bodies are refused for it by their derived `Deserialize`; catalog
//! bodies and import rows are read as a `Value` first (to name every bad field), so
//! they are parsed here.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::fmt;

/// Parse `bytes` as one JSON value, refusing duplicate keys (and trailing data).
pub fn parse_json(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = Strict.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

struct Strict;

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(Strict)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v).map(Value::Number).ok_or_else(|| E::custom("a number must be finite"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Strict.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Strict)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
            let value = map.next_value_seed(Strict)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::parse_json;

    #[test]
    fn duplicate_keys_are_refused_at_any_depth_and_everything_else_reads_as_serde_json_does() {
        for raw in [r#"{"a":1,"a":2}"#, r#"{"x":{"b":true,"b":false}}"#, r#"[{"c":null,"c":null}]"#] {
            let e = parse_json(raw.as_bytes()).expect_err(raw).to_string();
            assert!(e.contains("duplicate key"), "{raw}: {e}");
        }
        let raw = r#"{"a":[1,-2,3.5,"s\u00e9",null,true],"b":{"c":{}},"d":18446744073709551615}"#;
        let strict = parse_json(raw.as_bytes()).expect("valid");
        let loose: serde_json::Value = serde_json::from_str(raw).expect("valid");
        assert_eq!(strict, loose);
        assert!(parse_json(b"{} x").is_err(), "trailing data");
        assert!(parse_json(b"1e400").is_err(), "out of range");
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(parse_json(deep.as_bytes()).is_err(), "nesting is bounded");
    }
}
