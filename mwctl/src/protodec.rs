//! Prints protobuf messages: with the descriptor a publisher carries in its registration (a
//! serialized `FileDescriptorSet`, as eCAL sends it) through `prost-reflect`'s dynamic messages
//! and protobuf text format; without one, by wire types alone. The untyped printer is this
//! project's own (no crate prints field numbers from raw bytes); it was written from the protobuf
//! encoding documentation, treats input as untrusted (every read bounds-checked; nested messages are shown as bytes).

use prost_reflect::{DescriptorPool, DynamicMessage};
use std::fmt::Write as _;

/// The message types of one registered descriptor.
#[derive(Debug)]
pub struct Schema {
    pool: DescriptorPool,
}

impl Schema {
    /// Reads a serialized `FileDescriptorSet`; `None` when the bytes are not one, or it holds
    /// no message type, or its files do not link (a dependency missing).
    pub fn from_descriptor(bytes: &[u8]) -> Option<Self> {
        let pool = DescriptorPool::decode(bytes).ok()?;
        let has_messages = pool.all_messages().next().is_some();
        has_messages.then_some(Self { pool })
    }

    /// Whether the descriptor defines message `type_name` (full name, leading dot allowed).
    pub fn has(&self, type_name: &str) -> bool {
        self.pool.get_message_by_name(type_name.trim_start_matches('.')).is_some()
    }

    /// Protobuf text format of `data` as message `type_name`, a field per line (fields the
    /// descriptor does not know are printed by number).
    ///
    /// # Errors
    /// Unknown type, or the bytes are not a valid encoding of that message.
    pub fn render(&self, type_name: &str, data: &[u8]) -> Result<String, String> {
        let desc = self
            .pool
            .get_message_by_name(type_name.trim_start_matches('.'))
            .ok_or_else(|| format!("{type_name} is not in the descriptor"))?;
        let msg = DynamicMessage::decode(desc, data).map_err(|e| e.to_string())?;
        let options = prost_reflect::text_format::FormatOptions::new().pretty(true).skip_unknown_fields(false);
        let mut text = msg.to_text_format_with_options(&options);
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        Ok(text)
    }
}

fn line(out: &mut String, depth: usize, text: &str) {
    let _ = writeln!(out, "{:width$}{text}", "", width = depth * 2);
}

#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = *self.0.get(i).ok_or("truncated varint")?;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                self.0 = &self.0[i + 1..];
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes".into())
    }
    fn key(&mut self) -> Result<(i32, u8), String> {
        let k = self.varint()?;
        let number = (k >> 3) as i32;
        if number == 0 || k >> 3 > 0x1FFF_FFFF {
            return Err(format!("invalid field number {}", k >> 3));
        }
        Ok((number, (k & 7) as u8))
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.0.len() {
            return Err(format!("field of {n} bytes, {} left", self.0.len()));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.varint()?;
        self.take(usize::try_from(n).map_err(|_| "length overflow")?)
    }
    fn value(&mut self, wire: u8) -> Result<Value<'a>, String> {
        Ok(match wire {
            0 => Value::Varint(self.varint()?),
            1 => Value::Fixed64(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes"))),
            5 => Value::Fixed32(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes"))),
            2 => Value::Bytes(self.bytes()?),
            w => return Err(format!("unsupported wire type {w}")),
        })
    }
}

fn untyped(v: &Value<'_>) -> String {
    match v {
        Value::Varint(x) => x.to_string(),
        Value::Fixed64(x) => format!("{x} (fixed64)"),
        Value::Fixed32(x) => format!("{x} (fixed32)"),
        Value::Bytes(b) => match std::str::from_utf8(b) {
            Ok(s) if s.chars().all(|c| !c.is_control() || c == '\n' || c == '\t') => format!("{s:?}"),
            _ => hex_inline(b),
        },
    }
}

/// Fields by number, without a descriptor (what `protoc --decode_raw` shows).
///
/// # Errors
/// Not a valid protobuf encoding.
pub fn render_untyped(data: &[u8]) -> Result<String, String> {
    let mut out = String::new();
    fields_untyped(data, 0, &mut out)?;
    Ok(out)
}

fn fields_untyped(data: &[u8], depth: usize, out: &mut String) -> Result<(), String> {
    let mut r = Reader(data);
    while !r.0.is_empty() {
        let (number, wire) = r.key()?;
        let v = r.value(wire)?;
        line(out, depth, &format!("#{number}: {}", untyped(&v)));
    }
    Ok(())
}

fn hex_inline(b: &[u8]) -> String {
    const SHOWN: usize = 32;
    let mut s: String = b.iter().take(SHOWN).map(|x| format!("{x:02x}")).collect();
    if b.len() > SHOWN {
        let _ = write!(s, "... ({} bytes)", b.len());
    }
    s
}

/// A short hex dump: offset, 16 bytes in hex, printable ASCII; at most `max_lines` lines.
pub fn hex_dump(b: &[u8], max_lines: usize) -> String {
    let mut out = String::new();
    for (i, chunk) in b.chunks(16).take(max_lines).enumerate() {
        let hex: Vec<String> = chunk.iter().map(|x| format!("{x:02x}")).collect();
        let ascii: String = chunk.iter().map(|&x| if (0x20..0x7f).contains(&x) { x as char } else { '.' }).collect();
        let _ = writeln!(out, "{:08x}  {:<47}  |{ascii}|", i * 16, hex.join(" "));
    }
    if b.len() > max_lines * 16 {
        let _ = writeln!(out, "... {} more bytes", b.len() - max_lines * 16);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use prost_types::field_descriptor_proto::Type;
    use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorSet};

    /// The example programs' `pb.People.Person` record.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Person {
        #[prost(int32, tag = "1")]
        id: i32,
        #[prost(string, tag = "2")]
        name: String,
        #[prost(string, tag = "3")]
        email: String,
    }

    fn person_descriptor() -> Vec<u8> {
        let field = |name: &str, number, ty: Type| prost_types::FieldDescriptorProto {
            name: Some(name.into()),
            number: Some(number),
            r#type: Some(ty as i32),
            ..Default::default()
        };
        let set = prost_types::FileDescriptorSet {
            file: vec![prost_types::FileDescriptorProto {
                name: Some("person.proto".into()),
                package: Some("pb.People".into()),
                message_type: vec![DescriptorProto {
                    name: Some("Person".into()),
                    field: vec![
                        field("id", 1, Type::Int32),
                        field("name", 2, Type::String),
                        field("email", 3, Type::String),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        set.encode_to_vec()
    }

    #[test]
    fn person_decodes_with_its_descriptor() {
        let schema = Schema::from_descriptor(&person_descriptor()).unwrap();
        assert!(schema.has("pb.People.Person"));
        let p = Person { id: -3, name: "Ada".into(), email: "a@b".into() };
        let text = schema.render("pb.People.Person", &p.encode_to_vec()).unwrap();
        assert_eq!(text, "id: -3\nname: \"Ada\"\nemail: \"a@b\"\n");
    }

    #[test]
    fn nested_enums_packed_and_unknown_fields() {
        use prost_types::field_descriptor_proto::Label;
        use prost_types::{EnumValueDescriptorProto, FieldDescriptorProto, FileDescriptorProto};
        let f = |name: &str, n: i32, ty: Type, tn: &str, label: Label| FieldDescriptorProto {
            name: Some(name.into()),
            number: Some(n),
            r#type: Some(ty as i32),
            type_name: (!tn.is_empty()).then(|| tn.to_string()),
            label: Some(label as i32),
            ..Default::default()
        };
        let inner = DescriptorProto {
            name: Some("Inner".into()),
            field: vec![f("x", 1, Type::Sint32, "", Label::Optional)],
            ..Default::default()
        };
        let color = EnumDescriptorProto {
            name: Some("Color".into()),
            value: vec![EnumValueDescriptorProto { name: Some("RED".into()), number: Some(2), options: None }],
            ..Default::default()
        };
        let outer = DescriptorProto {
            name: Some("Outer".into()),
            field: vec![
                f("inner", 1, Type::Message, ".p.Outer.Inner", Label::Optional),
                f("c", 2, Type::Enum, ".p.Outer.Color", Label::Optional),
                f("v", 3, Type::Double, "", Label::Repeated),
            ],
            nested_type: vec![inner],
            enum_type: vec![color],
            ..Default::default()
        };
        let set = FileDescriptorSet {
            file: vec![FileDescriptorProto {
                package: Some("p".into()),
                message_type: vec![outer],
                ..Default::default()
            }],
        };
        let schema = Schema::from_descriptor(&set.encode_to_vec()).unwrap();
        // inner{x: -2 (zigzag 3)}, c: RED, v: packed [1.5, 2.0], unknown #9 varint 7.
        let mut data = vec![0x0a, 0x02, 0x08, 0x03, 0x10, 0x02, 0x1a, 16];
        data.extend_from_slice(&1.5f64.to_le_bytes());
        data.extend_from_slice(&2.0f64.to_le_bytes());
        data.extend_from_slice(&[0x48, 0x07]);
        let text = schema.render("p.Outer", &data).unwrap();
        // Protobuf text format: packed repeated as a list, unknown fields by number.
        assert_eq!(text, "inner {\n  x: -2\n}\nc: RED\nv: [1.5, 2.0]\n9: 7\n");
    }

    #[test]
    fn hostile_bytes_are_errors_not_panics() {
        let schema = Schema::from_descriptor(&person_descriptor()).unwrap();
        for data in [&[0x12, 0xff, 0xff, 0xff, 0xff, 0x0f][..], &[0x08], &[0x00], &[0x0b], &[0xff; 11]] {
            assert!(schema.render("pb.People.Person", data).is_err(), "{data:?}");
            assert!(render_untyped(data).is_err(), "{data:?}");
        }
        // Deep nesting of an untyped message only prints bytes, never recurses without bound.
        let mut deep = vec![];
        for _ in 0..10_000 {
            let mut d = vec![0x0a];
            prost::encoding::encode_varint(deep.len() as u64, &mut d);
            d.extend_from_slice(&deep);
            deep = d;
            if deep.len() > 100_000 {
                break;
            }
        }
        assert!(render_untyped(&deep).is_ok());
    }

    #[test]
    fn hex_dump_shape() {
        let d = hex_dump(b"hello, world! 0123456789", 4);
        assert_eq!(
            d,
            "00000000  68 65 6c 6c 6f 2c 20 77 6f 72 6c 64 21 20 30 31  |hello, world! 01|\n\
             00000010  32 33 34 35 36 37 38 39                          |23456789|\n"
        );
    }
}
