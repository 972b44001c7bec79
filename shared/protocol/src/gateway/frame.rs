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

/// A binary frame from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerFrame<'a> {
    /// Its number in the connection's `seq` counter.
    pub seq: u16,
    /// A binary opcode ([`Opcode::is_binary`]).
    pub op: Opcode,
    /// What follows the header.
    pub payload: &'a [u8],
}

impl<'a> ServerFrame<'a> {
    /// Header length: seq and op.
    pub const HEADER_LEN: usize = 3;

    /// Reads a frame.
    pub fn decode(bytes: &'a [u8]) -> Result<ServerFrame<'a>, FrameError> {
        let [s0, s1, op, payload @ ..] = bytes else {
            return Err(FrameError::Truncated);
        };
        Ok(ServerFrame {
            seq: u16::from_be_bytes([*s0, *s1]),
            op: binary_opcode(*op)?,
            payload,
        })
    }

    /// Appends the frame's bytes to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(Self::HEADER_LEN + self.payload.len());
        out.extend_from_slice(&self.seq.to_be_bytes());
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

/// A binary frame from a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientFrame<'a> {
    /// A binary opcode ([`Opcode::is_binary`]).
    pub op: Opcode,
    /// What follows the op byte.
    pub payload: &'a [u8],
}

impl<'a> ClientFrame<'a> {
    /// Header length: the op.
    pub const HEADER_LEN: usize = 1;

    /// Reads a frame.
    pub fn decode(bytes: &'a [u8]) -> Result<ClientFrame<'a>, FrameError> {
        let [op, payload @ ..] = bytes else {
            return Err(FrameError::Truncated);
        };
        Ok(ClientFrame {
            op: binary_opcode(*op)?,
            payload,
        })
    }

    /// Appends the frame's bytes to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(Self::HEADER_LEN + self.payload.len());
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
        let f = ServerFrame::decode(&wire).unwrap();
        assert_eq!(f.seq, 0x0102);
        assert_eq!(f.op, Opcode::DaveMlsProposals);
        assert_eq!(f.payload, &[0x00, 0x41]);
        assert_eq!(f.encode(), wire);
        let empty = ServerFrame {
            seq: 65535,
            op: Opcode::DaveMlsExternalSender,
            payload: &[],
        };
        assert_eq!(empty.encode(), [0xff, 0xff, 25]);
        assert_eq!(ServerFrame::decode(&empty.encode()), Ok(empty));
        assert_eq!(ServerFrame::decode(&[1, 2]), Err(FrameError::Truncated));
        assert_eq!(
            ServerFrame::decode(&[0, 1, 99]),
            Err(FrameError::UnknownOpcode)
        );
        assert_eq!(
            ServerFrame::decode(&[0, 1, 5, 9]),
            Err(FrameError::NotBinary)
        );
    }

    #[test]
    fn client_frames() {
        // op 26 (key package) with a 3-byte payload.
        let wire = [0x1a, 0x00, 0x01, 0x02];
        let f = ClientFrame::decode(&wire).unwrap();
        assert_eq!((f.op, f.payload), (Opcode::DaveMlsKeyPackage, &wire[1..]));
        assert_eq!(f.encode(), wire);
        let mut out = vec![0xee];
        f.encode_into(&mut out);
        assert_eq!(out[1..], wire);
        assert_eq!(ClientFrame::decode(&[]), Err(FrameError::Truncated));
        assert_eq!(ClientFrame::decode(&[31]), Err(FrameError::NotBinary));
        assert_eq!(ClientFrame::decode(&[200]), Err(FrameError::UnknownOpcode));
        assert_eq!(FrameError::Truncated.close_code(), CloseCode::DecodeError);
        let binary: Vec<u8> = Opcode::ALL
            .into_iter()
            .filter(|o| o.is_binary())
            .map(|o| o as u8)
            .collect();
        assert_eq!(binary, (25..=30).collect::<Vec<u8>>());
    }
}
