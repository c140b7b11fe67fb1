//! JSON in and out: the server's codec chosen by name, JSON values encoded with it and bodies
//! decoded back into JSON, and a request's JSON shaped to the method's arguments.

use std::fmt;

use bytes::Bytes;
use flumen::reflection::MethodDescription;
use flumen::{Cbor, Codec, CodecError, Json, MsgPack};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::Failure;

/// A self-describing codec: one a JSON value can be encoded with without the method's types.
#[derive(Clone, Debug)]
pub(crate) enum Format {
    MsgPack(MsgPack),
    Json(Json),
    Cbor(Cbor),
}

impl Format {
    /// The codec of [`Codec::name`] `name`.
    pub(crate) fn by_name(name: &str) -> Result<Self, Failure> {
        match name {
            "msgpack" => Ok(Self::MsgPack(MsgPack::default())),
            "json" => Ok(Self::Json(Json)),
            "cbor" => Ok(Self::Cbor(Cbor::default())),
            other => Err(Failure::Usage(format!(
                "the server's codec is {other:?}, which JSON cannot be converted to without \
                 the method's types; flumen speaks to servers using msgpack, json or cbor"
            ))),
        }
    }

    pub(crate) fn encode(&self, value: &Value) -> Result<Bytes, CodecError> {
        match self {
            Self::MsgPack(codec) => codec.encode(value),
            Self::Json(codec) => codec.encode(value),
            Self::Cbor(codec) => codec.encode(value),
        }
    }

    pub(crate) fn decode(&self, body: &[u8]) -> Result<Value, CodecError> {
        let any: Any = match self {
            Self::MsgPack(codec) => codec.decode(body)?,
            Self::Json(codec) => codec.decode(body)?,
            Self::Cbor(codec) => codec.decode(body)?,
        };
        Ok(any.0)
    }
}

/// Parses the command line's JSON argument (`None`: none given).
pub(crate) fn parse(text: Option<&str>) -> Result<Option<Value>, Failure> {
    let Some(text) = text else { return Ok(None) };
    serde_json::from_str(text)
        .map(Some)
        .map_err(|e| Failure::Usage(format!("the request is not valid JSON: {e}")))
}

/// The value to encode as `method`'s request body, from the JSON the user gave.
///
/// A service method's body is the tuple of its arguments: the user writes the one argument's
/// value, or all of them as an array or as an object keyed by their names. A method routed on
/// its own (or one the server does not describe) takes the value as written.
pub(crate) fn request(
    method: Option<&MethodDescription>,
    input: Option<Value>,
) -> Result<Value, Failure> {
    let Some(args) = method.and_then(|m| m.args.as_ref()) else {
        return Ok(input.unwrap_or(Value::Null));
    };
    let name = method.map_or("", |m| m.name.as_str());
    let signature = || {
        let list: Vec<String> = args
            .iter()
            .map(|a| format!("{}: {}", a.name, a.ty))
            .collect();
        format!("{name}({})", list.join(", "))
    };
    let values = match (args.len(), input) {
        // The empty tuple is the unit value: `nil` in MessagePack, `null` in JSON.
        (0, None | Some(Value::Null)) => return Ok(Value::Null),
        (0, Some(Value::Array(items))) if items.is_empty() => return Ok(Value::Null),
        (0, Some(Value::Object(fields))) if fields.is_empty() => return Ok(Value::Null),
        (1, Some(value)) => vec![value],
        (_, Some(Value::Array(items))) if items.len() == args.len() => items,
        (_, Some(Value::Object(mut fields))) if args.len() > 1 => {
            let mut values = Vec::with_capacity(args.len());
            for arg in args {
                values.push(fields.remove(&arg.name).ok_or_else(|| {
                    Failure::Usage(format!(
                        "missing argument {:?} of {}",
                        arg.name,
                        signature()
                    ))
                })?);
            }
            if let Some(extra) = fields.keys().next() {
                return Err(Failure::Usage(format!(
                    "{} has no argument {extra:?}",
                    signature()
                )));
            }
            values
        }
        (n, input) => {
            let given = match input {
                None => "none".to_owned(),
                Some(Value::Array(items)) => format!("an array of {}", items.len()),
                Some(_) => "one value".to_owned(),
            };
            return Err(Failure::Usage(format!(
                "{} takes {n} argument{}: give {}; got {given}",
                signature(),
                if n == 1 { "" } else { "s" },
                match n {
                    0 => "no JSON (or [])".to_owned(),
                    1 => "its value".to_owned(),
                    _ => "an array of them, or an object keyed by their names".to_owned(),
                }
            )));
        }
    };
    Ok(Value::Array(values))
}

/// A value of any self-describing format as JSON: byte strings become arrays of numbers,
/// map keys that are not strings become their JSON text.
struct Any(Value);

impl<'de> Deserialize<'de> for Any {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(AnyVisitor)
    }
}

struct AnyVisitor;

impl<'de> Visitor<'de> for AnyVisitor {
    type Value = Any;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Any, E> {
        Ok(Any(Value::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Any, E> {
        Ok(Any(Value::Number(v.into())))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Any, E> {
        Ok(Any(Value::Number(v.into())))
    }

    fn visit_i128<E>(self, v: i128) -> Result<Any, E> {
        // Beyond 64 bits JSON numbers lose precision in most readers: a string keeps it.
        Ok(Any(Value::String(v.to_string())))
    }

    fn visit_u128<E>(self, v: u128) -> Result<Any, E> {
        Ok(Any(Value::String(v.to_string())))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Any, E> {
        // NaN and the infinities have no JSON number.
        Ok(Any(Number::from_f64(v).map_or_else(
            || Value::String(v.to_string()),
            Value::Number,
        )))
    }

    fn visit_str<E>(self, v: &str) -> Result<Any, E> {
        Ok(Any(Value::String(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Any, E> {
        Ok(Any(Value::String(v)))
    }

    fn visit_bytes<E>(self, v: &[u8]) -> Result<Any, E> {
        Ok(Any(Value::Array(
            v.iter().map(|&b| Value::Number(b.into())).collect(),
        )))
    }

    fn visit_none<E>(self) -> Result<Any, E> {
        Ok(Any(Value::Null))
    }

    fn visit_unit<E>(self) -> Result<Any, E> {
        Ok(Any(Value::Null))
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Any, D::Error> {
        Any::deserialize(deserializer)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, deserializer: D) -> Result<Any, D::Error> {
        Any::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Any, A::Error> {
        // The size hint comes from the peer: capped, the vector grows as items really arrive.
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(Any(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Any(Value::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Any, A::Error> {
        let mut fields = Map::new();
        while let Some((Any(key), Any(value))) = map.next_entry()? {
            let key = match key {
                Value::String(key) => key,
                other => other.to_string(),
            };
            fields.insert(key, value);
        }
        Ok(Any(Value::Object(fields)))
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<Any, A::Error> {
        Err(de::Error::custom(
            "an enum the format does not describe as a map",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A method of `Kv` as reflection describes it, with `args` (name, type).
    fn method(name: &str, args: &[(&str, &str)]) -> MethodDescription {
        let args: Vec<_> = args
            .iter()
            .map(|(n, t)| json!({"name": n, "ty": t}))
            .collect();
        serde_json::from_value(json!({"name": name, "args": args})).unwrap()
    }

    #[test]
    fn arguments_as_an_array_an_object_or_one_value() {
        let put = method("Kv.put", &[("key", "String"), ("value", "u32")]);
        assert_eq!(
            request(Some(&put), Some(json!(["a", 1]))).unwrap(),
            json!(["a", 1])
        );
        assert_eq!(
            request(Some(&put), Some(json!({"value": 1, "key": "a"}))).unwrap(),
            json!(["a", 1])
        );
        let get = method("Kv.get", &[("key", "String")]);
        assert_eq!(
            request(Some(&get), Some(json!(["a", 1]))).unwrap(),
            json!([["a", 1]]),
            "one argument: the value is the argument, even an array"
        );
        let len = method("Kv.len", &[]);
        assert_eq!(request(Some(&len), None).unwrap(), Value::Null);
        assert_eq!(request(Some(&len), Some(json!([]))).unwrap(), Value::Null);
        assert_eq!(request(None, Some(json!([1, 2]))).unwrap(), json!([1, 2]));
    }

    #[test]
    fn arguments_that_do_not_fit_are_refused_before_sending() {
        let put = method("Kv.put", &[("key", "String"), ("value", "u32")]);
        let cases = [
            (Some(json!(["a"])), "takes 2 arguments"),
            (Some(json!(["a", 1, 2])), "got an array of 3"),
            (Some(json!({"key": "a"})), "missing argument \"value\""),
            (
                Some(json!({"key": "a", "value": 1, "ttl": 3})),
                "no argument \"ttl\"",
            ),
            (None, "got none"),
        ];
        for (input, expected) in cases {
            let error = request(Some(&put), input.clone()).unwrap_err().to_string();
            assert!(error.contains(expected), "{input:?}: {error}");
            assert!(error.contains("Kv.put(key: String, value: u32)"), "{error}");
        }
        let len = method("Kv.len", &[]);
        assert!(request(Some(&len), Some(json!(3))).is_err());
    }

    #[test]
    fn every_self_describing_codec_round_trips_json() {
        let value = json!({"name": "x", "list": [1, -2, 3.5, null, true], "nested": {"a": []}});
        for name in ["msgpack", "json", "cbor"] {
            let format = Format::by_name(name).unwrap();
            let body = format.encode(&value).unwrap();
            assert_eq!(format.decode(&body).unwrap(), value, "{name}");
        }
        let error = Format::by_name("bincode").unwrap_err().to_string();
        assert!(error.contains("\"bincode\""), "{error}");
    }

    #[test]
    fn bytes_and_integer_keys_become_json() {
        #[derive(serde::Serialize)]
        struct Blob {
            #[serde(with = "serde_bytes_like")]
            data: Vec<u8>,
            by_id: std::collections::BTreeMap<u32, bool>,
        }
        mod serde_bytes_like {
            pub(super) fn serialize<S: serde::Serializer>(
                v: &[u8],
                s: S,
            ) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(v)
            }
        }
        let blob = Blob {
            data: vec![1, 2],
            by_id: [(7, true)].into(),
        };
        let body = MsgPack::default().encode(&blob).unwrap();
        let decoded = Format::by_name("msgpack").unwrap().decode(&body).unwrap();
        assert_eq!(decoded, json!([[1, 2], {"7": true}]));
    }

    #[test]
    fn malformed_json_is_a_usage_error() {
        let error = parse(Some("[2,")).unwrap_err();
        assert!(matches!(error, Failure::Usage(_)), "{error}");
        assert!(error.to_string().contains("not valid JSON"), "{error}");
    }
}
