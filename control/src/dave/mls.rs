//! MLS primitives for the DAVE voice gateway (the MLS delivery service and
//! the group's single external sender).
//!
//! Pure functions over bytes: no I/O, no clock of our own (openmls'
//! `KeyPackageIn::validate` does read the system clock for the lifetime
//! check; DAVE key packages are valid `0..=u64::MAX`, so this never matters).
//!
//! Wire formats (see DAVE protocol v1.1.x, RFC 9420):
//! * op 25 `ExternalSender { signature_key<V>; Credential{u16 1; identity<V>} }`
//! * op 26 raw TLS `KeyPackage` (not MLSMessage-wrapped)
//! * op 27 `u8 op (0 append, 1 revoke) ‖ <V>vector`: append = back-to-back
//!   MLSMessage(PublicMessage proposal); revoke = back-to-back `ProposalRef<V>`
//! * op 28 `MLSMessage(commit) ‖ [Welcome]` with no length prefixes
//!
//! The gateway never knows the group context, so commits are only checked
//! structurally (group id, epoch, sender, content type, proposal list).

use openmls::prelude::{
    hash_ref::make_proposal_ref, BasicCredential, Ciphersuite, Credential, CredentialType,
    ExternalProposal, ExternalSender as MlsExternalSender, GroupEpoch, GroupId, KeyPackage,
    KeyPackageIn, LeafNodeIndex, MlsMessageBodyIn, MlsMessageIn, MlsMessageOut, ProposalOrRefIn,
    ProtocolVersion, Sender, SenderExtensionIndex, SignaturePublicKey, Welcome,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::{OpenMlsRustCrypto, RustCrypto};
use openmls_traits::types::SignatureScheme;
use tls_codec::{Deserialize, Serialize, VLBytes};

/// The only ciphersuite of DAVE protocol version 1.
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMP256_AES128GCM_SHA256_P256;

/// Identity bytes of the external sender's basic credential. Arbitrary: the
/// clients only require it to be the same in op 25 and in the group context
/// (libdave's test harness uses the same bytes).
pub const EXTERNAL_SENDER_IDENTITY: &[u8] = &[0x00, 0x01, 0x01, 0x00];

/// op 27 operation types.
pub const PROPOSALS_APPEND: u8 = 0;
pub const PROPOSALS_REVOKE: u8 = 1;

// RFC 9420 codepoints used by the hand parser.
const MLS10: u16 = 1;
const WIRE_FORMAT_PUBLIC_MESSAGE: u16 = 1;
const SENDER_MEMBER: u8 = 1;
const CONTENT_TYPE_COMMIT: u8 = 3;

/// Every failure of this module. Hostile input only ever yields an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MlsError {
    /// Bytes did not decode (truncated, bad varint, unknown enum value...).
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    /// Decoded fine but bytes were left over where none are allowed.
    #[error("trailing bytes after {0}")]
    TrailingBytes(&'static str),
    #[error("unsupported MLS protocol version {0}")]
    WrongVersion(u16),
    #[error("unsupported ciphersuite {0:#06x}")]
    WrongCiphersuite(u16),
    /// openmls rejected the key package (signatures, keys, extensions...).
    #[error("invalid key package: {0}")]
    InvalidKeyPackage(String),
    #[error("key package credential is not a basic credential")]
    NotBasicCredential,
    #[error("key package identity does not match the user id")]
    WrongIdentity,
    #[error("key package lifetime is not 0..=u64::MAX")]
    WrongLifetime,
    #[error("group id does not match the channel id")]
    WrongGroup,
    #[error("message is not a PublicMessage")]
    NotPublicMessage,
    #[error("message is not a commit")]
    NotCommit,
    #[error("commit sender is not a group member")]
    SenderNotMember,
    /// A proposal batch must not be empty.
    #[error("no proposals to send")]
    Empty,
    /// Payload would not fit an MLS varint vector (2^30 bytes).
    #[error("payload too large")]
    TooLarge,
    /// Failures on our own side (RNG, signing, serialization); not caused by
    /// peer input.
    #[error("internal MLS error: {0}")]
    Internal(String),
}

fn malformed(what: &'static str) -> impl FnOnce(tls_codec::Error) -> MlsError {
    move |e| MlsError::Malformed {
        what,
        detail: e.to_string(),
    }
}

fn internal<E: std::fmt::Display>(e: E) -> MlsError {
    MlsError::Internal(e.to_string())
}

/// Group id on the wire: the channel snowflake as 8 bytes big-endian.
pub fn group_id_bytes(channel_id: u64) -> [u8; 8] {
    channel_id.to_be_bytes()
}

/// MLS variable-length vector `<V>` around `body` (RFC 9420 §2.1.2).
fn vl_vector(body: Vec<u8>) -> Result<Vec<u8>, MlsError> {
    VLBytes::new(body)
        .tls_serialize_detached()
        .map_err(|_| MlsError::TooLarge)
}

// ---------------------------------------------------------------------------
// External sender (op 25)
// ---------------------------------------------------------------------------

/// The gateway's external-sender identity: a P-256 signing key and a basic
/// credential. Keep one for the whole life of a group.
pub struct ExternalSender {
    signer: SignatureKeyPair,
    credential: Credential,
}

impl std::fmt::Debug for ExternalSender {
    /// The public key only: the signing key is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalSender")
            .field("public_key", &hex::encode(self.public_key()))
            .finish_non_exhaustive()
    }
}

impl ExternalSender {
    /// Fresh random ECDSA P-256 / SHA-256 key pair.
    pub fn generate() -> Result<Self, MlsError> {
        let signer = SignatureKeyPair::new(SignatureScheme::ECDSA_SECP256R1_SHA256)
            .map_err(|e| MlsError::Internal(format!("key generation: {e:?}")))?;
        Ok(Self::from_signer(signer))
    }

    fn from_signer(signer: SignatureKeyPair) -> Self {
        let credential: Credential = BasicCredential::new(EXTERNAL_SENDER_IDENTITY.to_vec()).into();
        Self { signer, credential }
    }

    /// The 65-byte uncompressed public key.
    pub fn public_key(&self) -> &[u8] {
        self.signer.public()
    }

    /// The op 25 payload: TLS-serialized `ExternalSender`, no trailing bytes.
    pub fn payload(&self) -> Vec<u8> {
        let ext = MlsExternalSender::new(
            SignaturePublicKey::from(self.signer.to_public_vec()),
            self.credential.clone(),
        );
        // Serializing two short VL vectors cannot fail.
        ext.tls_serialize_detached()
            .expect("ExternalSender serialization is infallible for 65-byte keys")
    }
}

// ---------------------------------------------------------------------------
// Key packages (op 26)
// ---------------------------------------------------------------------------

/// A key package that passed [`validate_key_package`].
#[derive(Debug, Clone)]
pub struct ValidKeyPackage {
    key_package: KeyPackage,
    reference: Vec<u8>,
}

impl ValidKeyPackage {
    /// `KeyPackageRef` hash value (32 bytes, without length prefix).
    pub fn reference(&self) -> &[u8] {
        &self.reference
    }
}

/// Validate an op 26 payload (raw TLS `KeyPackage`) from user `user_id`.
///
/// Checks: exact parse, MLS 1.0, ciphersuite 2, openmls validation (leaf and
/// key-package signatures, init key != encryption key, extensions supported,
/// lifetime), basic credential with identity `user_id` as u64 BE, lifetime
/// exactly `0..=u64::MAX` as the DAVE protocol requires.
pub fn validate_key_package(bytes: &[u8], user_id: u64) -> Result<ValidKeyPackage, MlsError> {
    // Peek at version and suite first for a precise error.
    if bytes.len() < 4 {
        return Err(MlsError::Malformed {
            what: "key package",
            detail: "too short".into(),
        });
    }
    let version = u16::from_be_bytes([bytes[0], bytes[1]]);
    if version != MLS10 {
        return Err(MlsError::WrongVersion(version));
    }
    let suite = u16::from_be_bytes([bytes[2], bytes[3]]);
    if suite != u16::from(CIPHERSUITE) {
        return Err(MlsError::WrongCiphersuite(suite));
    }

    let kp_in = KeyPackageIn::tls_deserialize_exact(bytes).map_err(|e| match e {
        tls_codec::Error::TrailingData => MlsError::TrailingBytes("key package"),
        e => malformed("key package")(e),
    })?;

    let crypto = RustCrypto::default();
    let kp = kp_in
        .validate(&crypto, ProtocolVersion::Mls10)
        .map_err(|e| MlsError::InvalidKeyPackage(e.to_string()))?;

    if kp.ciphersuite() != CIPHERSUITE {
        return Err(MlsError::WrongCiphersuite(u16::from(kp.ciphersuite())));
    }

    let credential = kp.leaf_node().credential();
    if credential.credential_type() != CredentialType::Basic {
        return Err(MlsError::NotBasicCredential);
    }
    let basic =
        BasicCredential::try_from(credential.clone()).map_err(|_| MlsError::NotBasicCredential)?;
    if basic.identity() != user_id.to_be_bytes() {
        return Err(MlsError::WrongIdentity);
    }

    let lifetime = kp.life_time();
    if lifetime.not_before() != 0 || lifetime.not_after() != u64::MAX {
        return Err(MlsError::WrongLifetime);
    }

    let reference = kp.hash_ref(&crypto).map_err(internal)?.as_slice().to_vec();
    Ok(ValidKeyPackage {
        key_package: kp,
        reference,
    })
}

// ---------------------------------------------------------------------------
// External proposals (op 27)
// ---------------------------------------------------------------------------

/// An op 27 payload plus the `ProposalRef`s of what it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposals {
    /// The whole op 27 payload including the leading operation-type byte.
    pub payload: Vec<u8>,
    /// Each proposal's `ProposalRef` hash (32 bytes, no prefix), in order.
    pub refs: Vec<Vec<u8>>,
}

/// Serialize one external-proposal MLSMessage and compute its ProposalRef.
///
/// `ProposalRef = RefHash("MLS 1.0 Proposal Reference", AuthenticatedContent)`
/// and for an external sender (no membership tag) AuthenticatedContent is
/// exactly the MLSMessage minus its 2-byte protocol version.
fn finish_proposal(msg: MlsMessageOut) -> Result<(Vec<u8>, Vec<u8>), MlsError> {
    let bytes = msg.tls_serialize_detached().map_err(internal)?;
    let reference = make_proposal_ref(&bytes[2..], CIPHERSUITE, &RustCrypto::default())
        .map_err(|e| MlsError::Internal(format!("proposal ref: {e:?}")))?;
    Ok((bytes, reference.as_slice().to_vec()))
}

fn append_payload(messages: Vec<(Vec<u8>, Vec<u8>)>) -> Result<Proposals, MlsError> {
    if messages.is_empty() {
        return Err(MlsError::Empty);
    }
    let mut body = Vec::new();
    let mut refs = Vec::with_capacity(messages.len());
    for (bytes, r) in messages {
        body.extend_from_slice(&bytes);
        refs.push(r);
    }
    let mut payload = vec![PROPOSALS_APPEND];
    payload.extend_from_slice(&vl_vector(body)?);
    Ok(Proposals { payload, refs })
}

/// op 27 append with one external proposal per item, each made by
/// `propose(item, group id, epoch)`.
fn proposals<T, E: std::fmt::Display>(
    group_id: u64,
    epoch: u64,
    items: &[T],
    propose: impl Fn(&T, GroupId, GroupEpoch) -> Result<MlsMessageOut, E>,
) -> Result<Proposals, MlsError> {
    let gid = GroupId::from_slice(&group_id_bytes(group_id));
    let messages = items
        .iter()
        .map(|item| {
            let msg = propose(item, gid.clone(), GroupEpoch::from(epoch)).map_err(internal)?;
            finish_proposal(msg)
        })
        .collect::<Result<Vec<_>, _>>()?;
    append_payload(messages)
}

/// op 27 append with one external Add per key package, signed by `sender`
/// (external sender index 0) for `group_id` (channel id) at `epoch`.
pub fn add_proposals(
    sender: &ExternalSender,
    group_id: u64,
    epoch: u64,
    packages: &[&ValidKeyPackage],
) -> Result<Proposals, MlsError> {
    proposals(group_id, epoch, packages, |kp, gid, epoch| {
        let index = SenderExtensionIndex::new(0);
        let package = kp.key_package.clone();
        ExternalProposal::new_add::<OpenMlsRustCrypto>(package, gid, epoch, &sender.signer, index)
    })
}

/// op 27 append with one external Remove per leaf index.
pub fn remove_proposals(
    sender: &ExternalSender,
    group_id: u64,
    epoch: u64,
    leaves: &[u32],
) -> Result<Proposals, MlsError> {
    proposals(group_id, epoch, leaves, |leaf, gid, epoch| {
        let index = SenderExtensionIndex::new(0);
        let leaf = LeafNodeIndex::new(*leaf);
        ExternalProposal::new_remove::<OpenMlsRustCrypto>(leaf, gid, epoch, &sender.signer, index)
    })
}

/// op 27 revoke: `u8 1 ‖ <V>(ProposalRef<V>...)`.
pub fn revoke_payload(refs: &[Vec<u8>]) -> Vec<u8> {
    let mut body = Vec::with_capacity(refs.len() * 33);
    for r in refs {
        // A 32-byte ref always fits a 1-byte varint prefix.
        body.extend_from_slice(&vl_vector(r.clone()).expect("ref is small"));
    }
    let mut payload = vec![PROPOSALS_REVOKE];
    payload.extend_from_slice(&vl_vector(body).expect("revoke list fits 2^30"));
    payload
}

// ---------------------------------------------------------------------------
// Commit + Welcome (op 28)
// ---------------------------------------------------------------------------

/// A structurally checked op 28 payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// The MLSMessage commit bytes, unchanged (forward as op 29 body).
    pub commit: Vec<u8>,
    /// The raw Welcome, if present (forward as op 30 body).
    pub welcome: Option<Vec<u8>>,
    /// `FramedContent.epoch` (the epoch the commit applies to).
    pub epoch: u64,
    /// Leaf index of the committing member.
    pub sender_leaf: u32,
    /// ProposalRefs referenced by the commit, in commit order.
    pub proposal_refs: Vec<Vec<u8>>,
    /// True if the commit carries any proposal by value (DAVE forbids it).
    pub inline_proposals: bool,
    /// KeyPackageRefs the Welcome's `EncryptedGroupSecrets` are for.
    pub welcome_key_packages: Vec<Vec<u8>>,
}

/// Tiny forward-only reader for the hand-parsed FramedContent prefix.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MlsError> {
        if self.0.len() < n {
            return Err(MlsError::Malformed {
                what: "commit",
                detail: "truncated".into(),
            });
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, MlsError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, MlsError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, MlsError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, MlsError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    /// A `<V>` byte vector.
    fn vl(&mut self) -> Result<Vec<u8>, MlsError> {
        let mut r = self.0;
        let v = VLBytes::tls_deserialize(&mut r).map_err(malformed("commit"))?;
        self.0 = r;
        Ok(v.into())
    }
}

/// Parse and structurally check an op 28 payload for group `group_id`.
///
/// The first MLSMessage is decoded in full by openmls (which locates its end
/// and validates the whole encoding, UpdatePath included). The FramedContent
/// prefix and the commit's proposal list are then read by hand because
/// openmls keeps the commit body `pub(crate)`:
///
/// ```text
/// MLSMessage  = u16 version(1) ‖ u16 wire_format(1=public) ‖ PublicMessage
/// PublicMessage = FramedContent ‖ FramedContentAuthData ‖ [membership_tag]
/// FramedContent = group_id<V> ‖ u64 epoch ‖ Sender ‖ authenticated_data<V>
///                 ‖ u8 content_type(3=commit) ‖ Commit
/// Sender(member) = u8 1 ‖ u32 leaf_index
/// Commit = ProposalOrRef proposals<V> ‖ optional<UpdatePath>
/// ProposalOrRef = u8 1 ‖ Proposal | u8 2 ‖ ProposalRef<V>
/// ```
pub fn parse_commit_welcome(bytes: &[u8], group_id: u64) -> Result<Commit, MlsError> {
    // 1. Find the end of the MLSMessage (and validate its encoding).
    let mut rest: &[u8] = bytes;
    let msg = MlsMessageIn::tls_deserialize(&mut rest).map_err(malformed("commit"))?;
    let commit_len = bytes.len() - rest.len();
    let (commit_bytes, welcome_bytes) = bytes.split_at(commit_len);

    // 2. Cross-check with openmls' public accessors.
    let pm = match msg.extract() {
        MlsMessageBodyIn::PublicMessage(pm) => pm,
        _ => return Err(MlsError::NotPublicMessage),
    };
    if pm.group_id().as_slice() != group_id_bytes(group_id) {
        return Err(MlsError::WrongGroup);
    }
    let sender_leaf = match pm.sender() {
        Sender::Member(leaf) => leaf.u32(),
        _ => return Err(MlsError::SenderNotMember),
    };

    // 3. Hand-parse the FramedContent prefix and the proposal list.
    let mut r = Reader(commit_bytes);
    let version = r.u16()?;
    if version != MLS10 {
        return Err(MlsError::WrongVersion(version));
    }
    if r.u16()? != WIRE_FORMAT_PUBLIC_MESSAGE {
        return Err(MlsError::NotPublicMessage);
    }
    if r.vl()? != group_id_bytes(group_id) {
        return Err(MlsError::WrongGroup);
    }
    let epoch = r.u64()?;
    if r.u8()? != SENDER_MEMBER {
        return Err(MlsError::SenderNotMember);
    }
    let leaf = r.u32()?;
    let _authenticated_data = r.vl()?;
    if r.u8()? != CONTENT_TYPE_COMMIT {
        return Err(MlsError::NotCommit);
    }
    // Consistency with openmls' own decoding (cannot differ unless our
    // hand-parser is wrong; cheap to check).
    if leaf != sender_leaf || epoch != pm.epoch().as_u64() {
        return Err(MlsError::Internal("commit header mismatch".into()));
    }

    let mut list = r.0;
    let proposals = Vec::<ProposalOrRefIn>::tls_deserialize(&mut list)
        .map_err(malformed("commit proposals"))?;
    let mut proposal_refs = Vec::new();
    let mut inline_proposals = false;
    for p in proposals {
        match p {
            ProposalOrRefIn::Reference(r) => proposal_refs.push(r.as_slice().to_vec()),
            ProposalOrRefIn::Proposal(_) => inline_proposals = true,
        }
    }

    // 4. Optional raw Welcome: must parse exactly.
    let (welcome, welcome_key_packages) = if welcome_bytes.is_empty() {
        (None, Vec::new())
    } else {
        if welcome_bytes.len() < 2 {
            return Err(MlsError::Malformed {
                what: "welcome",
                detail: "too short".into(),
            });
        }
        let suite = u16::from_be_bytes([welcome_bytes[0], welcome_bytes[1]]);
        if suite != u16::from(CIPHERSUITE) {
            return Err(MlsError::WrongCiphersuite(suite));
        }
        let w = Welcome::tls_deserialize_exact(welcome_bytes).map_err(|e| match e {
            tls_codec::Error::TrailingData => MlsError::TrailingBytes("welcome"),
            e => malformed("welcome")(e),
        })?;
        let kps = w
            .secrets()
            .iter()
            .map(|s| s.new_member().as_slice().to_vec())
            .collect();
        (Some(welcome_bytes.to_vec()), kps)
    };

    Ok(Commit {
        commit: commit_bytes.to_vec(),
        welcome,
        epoch,
        sender_leaf,
        proposal_refs,
        inline_proposals,
        welcome_key_packages,
    })
}

// ---------------------------------------------------------------------------
// Leaf bookkeeping
// ---------------------------------------------------------------------------

/// Apply a commit's membership changes to a leaf-indexed roster
/// (`roster[leaf] = Some(user)` or `None` for a blank leaf), per RFC 9420
/// §12.3 / §7.7-7.8: all removes first (blank the leaf), trailing blank
/// leaves are truncated, then each add takes the leftmost blank leaf or is
/// appended, in commit order. Returns the leaf index of each added user.
///
/// Truncating every trailing blank (instead of RFC's power-of-two subtree
/// truncation) yields the same leaf indices because adds always take the
/// leftmost blank first.
///
/// Removing an out-of-range or already blank leaf is ignored (the commit
/// validation must have rejected it earlier).
pub fn apply_to_roster(
    roster: &mut Vec<Option<u64>>,
    removed_leaves: &[u32],
    added_users: &[u64],
) -> Vec<u32> {
    for &leaf in removed_leaves {
        if let Some(slot) = roster.get_mut(leaf as usize) {
            *slot = None;
        }
    }
    while matches!(roster.last(), Some(None)) {
        roster.pop();
    }
    added_users
        .iter()
        .map(|&user| match roster.iter().position(Option::is_none) {
            Some(i) => {
                roster[i] = Some(user);
                i as u32
            }
            None => {
                roster.push(Some(user));
                (roster.len() - 1) as u32
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_sender_payload_layout() {
        let s = ExternalSender::generate().unwrap();
        let p = s.payload();
        // 0x40 0x41 = varint 65, then the uncompressed point (0x04 ...).
        assert_eq!(&p[..3], &[0x40, 0x41, 0x04]);
        assert_eq!(&p[2..67], s.public_key());
        // Credential{u16 1 (basic), identity<V>}.
        assert_eq!(&p[67..], &[0x00, 0x01, 0x04, 0x00, 0x01, 0x01, 0x00]);
        MlsExternalSender::tls_deserialize_exact(&p).unwrap();
    }

    #[test]
    fn revoke_layout() {
        let refs = vec![vec![0xaa; 32], vec![0xbb; 32]];
        let p = revoke_payload(&refs);
        assert_eq!(p[0], 1);
        assert_eq!(&p[1..3], &[0x40, 66]); // 66 does not fit 6 bits
        assert_eq!(p[3], 0x20);
        assert_eq!(p.len(), 3 + 66);
    }

    #[test]
    fn remove_proposal_layout_and_ref() {
        let s = ExternalSender::generate().unwrap();
        let p = remove_proposals(&s, 424242, 2, &[2]).unwrap();
        assert_eq!(p.payload[0], 0);
        assert_eq!(p.refs.len(), 1);
        assert_eq!(p.refs[0].len(), 32);
        // Skip op byte and 2-byte varint.
        let body = &p.payload[3..];
        let mut expect = vec![0, 1, 0, 1, 8];
        expect.extend_from_slice(&424242u64.to_be_bytes());
        expect.extend_from_slice(&2u64.to_be_bytes());
        expect.extend_from_slice(&[2, 0, 0, 0, 0]); // external, index 0
        expect.extend_from_slice(&[0, 2, 0, 3, 0, 0, 0, 2]); // no aad, proposal, remove(2)
        assert_eq!(&body[..expect.len()], &expect[..]);
    }

    #[test]
    fn hostile_bytes_are_errors() {
        for input in [
            &[][..],
            &[0, 1],
            &[0, 1, 0, 2],
            &[0, 1, 0, 1, 0xff, 0xff, 0xff, 0xff],
        ] {
            assert!(validate_key_package(input, 1).is_err());
            assert!(parse_commit_welcome(input, 1).is_err());
        }
        // Random garbage of many lengths.
        let mut x: u32 = 0x1234_5678;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = validate_key_package(&bytes, 1);
            let _ = parse_commit_welcome(&bytes, 1);
        }
    }

    #[test]
    fn huge_length_prefix_is_an_error() {
        // group_id<V> claiming 2^30-1 bytes. tls_codec allocates the zeroed
        // buffer before reading (lazily-mapped pages on Linux, so cheap),
        // then fails on the short read.
        let bytes = [0, 1, 0, 1, 0xbf, 0xff, 0xff, 0xff, 0];
        assert!(parse_commit_welcome(&bytes, 1).is_err());
        let kp = [0, 1, 0, 2, 0xbf, 0xff, 0xff, 0xff, 0];
        assert!(validate_key_package(&kp, 1).is_err());
    }

    #[test]
    fn roster_rules() {
        let mut r = vec![];
        assert_eq!(apply_to_roster(&mut r, &[], &[1, 2]), vec![0, 1]);
        assert_eq!(apply_to_roster(&mut r, &[], &[3]), vec![2]);
        // Remove middle then add: fills the hole.
        assert_eq!(apply_to_roster(&mut r, &[1], &[4]), vec![1]);
        assert_eq!(r, vec![Some(1), Some(4), Some(3)]);
        // Remove last: truncated, next add appends at 2 again.
        assert_eq!(apply_to_roster(&mut r, &[2], &[]), Vec::<u32>::new());
        assert_eq!(r, vec![Some(1), Some(4)]);
        assert_eq!(apply_to_roster(&mut r, &[0], &[5, 6]), vec![0, 2]);
        assert_eq!(r, vec![Some(5), Some(4), Some(6)]);
    }
}
