//! Every codec against the same cases: values round-trip, garbage is an error and never a
//! panic, and bodies that lie (deep nesting, lengths past the end) fail without costing more
//! than they are long.

use flumen_codec::{
    Bincode, Blob, Cbor, Codec, CodecError, Json, MsgPack, Postcard, BLOB_SHARE_MIN,
};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Shape {
    Dot,
    Circle { radius: f64 },
    Poly(Vec<(i32, i32)>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    id: u64,
    name: String,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
    tags: Vec<String>,
    shape: Shape,
    parent: Option<Box<Record>>,
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        Just(Shape::Dot),
        (-1e9f64..1e9).prop_map(|radius| Shape::Circle { radius }),
        proptest::collection::vec(any::<(i32, i32)>(), 0..8).prop_map(Shape::Poly),
    ]
}

fn record() -> impl Strategy<Value = Record> {
    let leaf = (
        any::<u64>(),
        ".{0,16}",
        proptest::collection::vec(any::<u8>(), 0..64),
        proptest::collection::vec(".{0,8}", 0..4),
        shape(),
    )
        .prop_map(|(id, name, data, tags, shape)| Record {
            id,
            name,
            data,
            tags,
            shape,
            parent: None,
        });
    leaf.prop_recursive(3, 8, 1, |inner| {
        (inner, any::<u64>()).prop_map(|(parent, id)| Record {
            id,
            name: "child".into(),
            data: vec![1, 2, 3],
            tags: Vec::new(),
            shape: Shape::Dot,
            parent: Some(Box::new(parent)),
        })
    })
}

/// `depth` nested one-element sequences around a zero, as each self-describing codec writes
/// them.
fn nested(codec: &str, depth: usize) -> Vec<u8> {
    match codec {
        "msgpack" => [vec![0x91; depth], vec![0x00]].concat(),
        "cbor" => [vec![0x81; depth], vec![0x00]].concat(),
        "json" => [vec![b'['; depth], vec![b'0'], vec![b']'; depth]].concat(),
        other => unreachable!("{other} is not self-describing"),
    }
}

/// The count at the head of an encoded `Vec`, replaced by one claiming about four billion
/// items (the rest of the body stays: a few short strings).
fn lying_count(codec: &str, body: &[u8]) -> Option<Vec<u8>> {
    let claim: &[u8] = match codec {
        "json" => return None,                        // JSON declares no lengths
        "msgpack" => &[0xdd, 0xff, 0xff, 0xff, 0xff], // array32
        "cbor" => &[0x9a, 0xff, 0xff, 0xff, 0xff],    // array, 32-bit count
        _ => &[0xfc, 0xff, 0xff, 0xff, 0xff],         // bincode/postcard varint u32::MAX
    };
    // Every codec here writes a four-item count in one byte.
    Some([claim, &body[1..]].concat())
}

macro_rules! matrix {
    ($($name:ident: $codec:expr, blobs shared: $shares:expr,)*) => {$(
        mod $name {
            use super::*;

            proptest! {
                #[test]
                fn values_round_trip(value in record()) {
                    let codec = $codec;
                    let body = codec.encode(&value).unwrap();
                    prop_assert_eq!(codec.decode::<Record>(&body).unwrap(), value);
                }

                #[test]
                fn garbage_is_an_error_never_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
                    let _ = $codec.decode::<Record>(&bytes);
                    let _ = $codec.decode::<Vec<String>>(&bytes);
                    // Long enough to be lent to its Blobs.
                    let long: Vec<u8> = bytes.iter().copied().cycle().take(4 * BLOB_SHARE_MIN).collect();
                    let _ = $codec.decode_body::<(u32, Blob)>(&long.into());
                }

                #[test]
                fn every_truncation_is_an_error(value in record()) {
                    let codec = $codec;
                    let body = codec.encode(&value).unwrap();
                    for len in 0..body.len() {
                        prop_assert!(codec.decode::<Record>(&body[..len]).is_err(), "{} of {}", len, body.len());
                    }
                }
            }

            /// A `Blob` round-trips; decoded through `decode_body`, a large one is a slice of
            /// the body where the format reads byte strings in place; it reads and writes
            /// what `serde_bytes` does.
            #[test]
            fn blobs_round_trip_and_large_ones_share_the_body() {
                let codec = $codec;
                for len in [0, 100, BLOB_SHARE_MIN - 1, BLOB_SHARE_MIN, 64 * 1024] {
                    let blob = Blob::from((0..len).map(|i| i as u8).collect::<Vec<_>>());
                    let body = codec.encode(&(7u32, blob.clone())).unwrap();
                    let within = |blob: &Blob| body.as_ptr_range().contains(&blob.as_ptr());
                    let (n, decoded): (u32, Blob) = codec.decode_body(&body).unwrap();
                    assert_eq!((n, &decoded), (7, &blob), "{len} bytes");
                    let shared = $shares && len >= BLOB_SHARE_MIN;
                    assert_eq!(within(&decoded), shared, "{len} bytes shared");
                    // Without the body lent, a copy.
                    let (_, copied): (u32, Blob) = codec.decode(&body).unwrap();
                    assert_eq!(copied, blob);
                    assert!(!within(&copied), "{len} bytes shared, unlent");
                    // The wire format of `serde_bytes`, both ways.
                    let (_, read): (u32, serde_bytes::ByteBuf) = codec.decode(&body).unwrap();
                    assert_eq!(&read[..], &blob[..]);
                    let written = codec.encode(&(7u32, serde_bytes::ByteBuf::from(blob.to_vec()))).unwrap();
                    assert_eq!(written, body);
                }
            }

            #[test]
            fn a_count_past_the_end_is_an_error() {
                let codec = $codec;
                let body = codec.encode(&vec![String::from("x"); 4]).unwrap();
                let Some(lying) = lying_count(stringify!($name), &body) else {
                    return;
                };
                let decoded = codec.decode::<Vec<String>>(&lying);
                assert!(matches!(decoded, Err(CodecError::Decode(_))), "{decoded:?}");
            }
        }
    )*};
}

matrix! {
    msgpack: MsgPack::default(), blobs shared: true,
    json: Json, blobs shared: false,
    postcard: Postcard, blobs shared: true,
    cbor: Cbor::default(), blobs shared: false,
    bincode: Bincode, blobs shared: true,
}

/// Any nesting of lists: decoding it recurses as deep as the body nests.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Nest {
    Leaf(#[allow(dead_code)] u8),
    List(#[allow(dead_code)] Vec<Nest>),
}

fn decodes(codec: &str, body: &[u8]) -> bool {
    match codec {
        "msgpack" => MsgPack::default().decode::<Nest>(body).is_ok(),
        "cbor" => Cbor::default().decode::<Nest>(body).is_ok(),
        _ => Json.decode::<Nest>(body).is_ok(),
    }
}

#[test]
fn self_describing_codecs_stop_at_their_nesting_limit() {
    for codec in ["msgpack", "cbor", "json"] {
        // Deep enough to exhaust the stack without a limit.
        assert!(!decodes(codec, &nested(codec, 100_000)), "{codec}");
        // Within the limit, the same shape decodes.
        assert!(decodes(codec, &nested(codec, 50)), "{codec} at depth 50");
    }
}

/// A CBOR body carried inside a MessagePack one, decoded by the outer value's `Deserialize`:
/// the CBOR decode runs inside MessagePack's lent decode.
#[derive(Debug)]
struct CborInside(Blob);

impl<'de> Deserialize<'de> for CborInside {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let inner = serde_bytes::ByteBuf::deserialize(deserializer)?;
        Cbor::default()
            .decode(&inner)
            .map(CborInside)
            .map_err(serde::de::Error::custom)
    }
}

#[test]
fn a_codec_that_does_not_lend_reads_large_blobs_inside_one_that_does() {
    let blob = Blob::from(vec![4u8; 64 * 1024]);
    let cbor = Cbor::default().encode(&blob).unwrap();
    let body = MsgPack::default()
        .encode(&serde_bytes::Bytes::new(&cbor))
        .unwrap();
    let CborInside(decoded) = MsgPack::default().decode_body(&body).unwrap();
    assert_eq!(decoded, blob);
}
