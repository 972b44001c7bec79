//! Binary frames on the voice gateway, which DAVE's MLS ops use
//! (DAVE.md "Framing"): server → client `u16 seq (big-endian) ‖ u8 op ‖
//! payload`, client → server `u8 op ‖ payload`. The `seq` is the same
//! counter as the JSON messages' `seq`.

use super::{CloseCode, Opcode};

/// Why a binary frame could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Shorter than its header.
    #[error("binary frame too short")]
    Truncated,
    /// The op byte names no opcode.
    #[error("unknown opcode")]
    UnknownOpcode,
    /// The opcode is not one that travels in binary frames.
    #[error("opcode is not binary")]
    NotBinary,
}

impl FrameError {
    /// The close code this refusal earns.
    pub fn close_code(self) -> CloseCode {
        match self {
            FrameError::Truncated => CloseCode::DecodeError,
            FrameError::UnknownOpcode | FrameError::NotBinary => CloseCode::UnknownOpcode,
        }
    }
}

fn binary_opcode(byte: u8) -> Result<Opcode, FrameError> {
    let op = Opcode::from_code(byte.into()).ok_or(FrameError::UnknownOpcode)?;
    if op.is_binary() {
        Ok(op)
    } else {
        Err(FrameError::NotBinary)
    }
}

/// A binary frame: from the server with a `seq`, from a client without.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Its number in the connection's `seq` counter (server frames only).
    pub seq: Option<u16>,
    /// A binary opcode ([`Opcode::is_binary`]).
    pub op: Opcode,
    /// What follows the header.
    pub payload: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Reads a frame the server sent: `u16 seq ‖ u8 op ‖ payload`.
    pub fn from_server(bytes: &'a [u8]) -> Result<Frame<'a>, FrameError> {
        let [s0, s1, rest @ ..] = bytes else {
            return Err(FrameError::Truncated);
        };
        let frame = Frame::from_client(rest)?;
        Ok(Frame {
            seq: Some(u16::from_be_bytes([*s0, *s1])),
            ..frame
        })
    }

    /// Reads a frame a client sent: `u8 op ‖ payload`.
    pub fn from_client(bytes: &'a [u8]) -> Result<Frame<'a>, FrameError> {
        let [op, payload @ ..] = bytes else {
            return Err(FrameError::Truncated);
        };
        Ok(Frame {
            seq: None,
            op: binary_opcode(*op)?,
            payload,
        })
    }

    /// Appends the frame's bytes to `out`: the seq if it has one, the op,
    /// the payload.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(3 + self.payload.len());
        if let Some(seq) = self.seq {
            out.extend_from_slice(&seq.to_be_bytes());
        }
        out.push(self.op as u8);
        out.extend_from_slice(self.payload);
    }

    /// The frame's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_frames() {
        // seq 0x0102, op 27 (proposals), payload 00 41: as on the wire.
        let wire = [0x01, 0x02, 0x1b, 0x00, 0x41];
        let f = Frame::from_server(&wire).unwrap();
        assert_eq!(f.seq, Some(0x0102));
        assert_eq!(f.op, Opcode::DaveMlsProposals);
        assert_eq!(f.payload, &[0x00, 0x41]);
        assert_eq!(f.encode(), wire);
        let empty = Frame {
            seq: Some(65535),
            op: Opcode::DaveMlsExternalSender,
            payload: &[],
        };
        assert_eq!(empty.encode(), [0xff, 0xff, 25]);
        assert_eq!(Frame::from_server(&empty.encode()), Ok(empty));
        assert_eq!(Frame::from_server(&[1, 2]), Err(FrameError::Truncated));
        assert_eq!(
            Frame::from_server(&[0, 1, 99]),
            Err(FrameError::UnknownOpcode)
        );
        assert_eq!(
            Frame::from_server(&[0, 1, 5, 9]),
            Err(FrameError::NotBinary)
        );
    }

    #[test]
    fn client_frames() {
        // op 26 (key package) with a 3-byte payload.
        let wire = [0x1a, 0x00, 0x01, 0x02];
        let f = Frame::from_client(&wire).unwrap();
        assert_eq!(
            (f.seq, f.op, f.payload),
            (None, Opcode::DaveMlsKeyPackage, &wire[1..])
        );
        assert_eq!(f.encode(), wire);
        let mut out = vec![0xee];
        f.encode_into(&mut out);
        assert_eq!(out[1..], wire);
        assert_eq!(Frame::from_client(&[]), Err(FrameError::Truncated));
        assert_eq!(Frame::from_client(&[31]), Err(FrameError::NotBinary));
        assert_eq!(Frame::from_client(&[200]), Err(FrameError::UnknownOpcode));
        assert_eq!(FrameError::Truncated.close_code(), CloseCode::DecodeError);
        let binary: Vec<u8> = Opcode::ALL
            .iter()
            .filter(|o| o.is_binary())
            .map(|o| *o as u8)
            .collect();
        assert_eq!(binary, (25..=30).collect::<Vec<u8>>());
    }
}
