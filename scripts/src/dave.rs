//! A DAVE client's MLS member, sans-IO: what a Discord voice client does
//! with the server's DAVE ops (DAVE.md), the way `@snazzah/davey` (the
//! library @discordjs/voice uses, itself on openmls 0.8.1) does it.
//!
//! Drive it from the gateway's messages:
//!
//! - Session Description with `dave_protocol_version` 1, or op 24 with
//!   epoch 1 ([`reset`](DaveClient::reset) first): send
//!   [`key_package`](DaveClient::key_package) as binary op 26.
//! - op 25: [`set_external_sender`](DaveClient::set_external_sender) (this
//!   creates the pending group, the member's own at epoch 0).
//! - op 27: [`process_proposals`](DaveClient::process_proposals) with the
//!   users the gateway announced (ops 11/13); what it returns is the op 28
//!   payload (`commit ‖ welcome`) to send.
//! - op 29: [`process_commit`](DaveClient::process_commit) with the body
//!   after the `u16` transition id; op 30:
//!   [`process_welcome`](DaveClient::process_welcome) likewise. Then op 23
//!   for the transition (none when it is 0); op 31 if either failed.
//!
//! No clock, no socket; the key material is random (openmls' provider).
//! Media frames are not encrypted here: the member reaches the same epoch
//! and roster as davey, which is what the gateway decides.

use openmls::group::{
    MlsGroup, MlsGroupCreateConfig, MlsGroupJoinConfig, ProcessMessageError, StageCommitError,
    StagedWelcome, PURE_PLAINTEXT_WIRE_FORMAT_POLICY,
};
use openmls::prelude::hash_ref::ProposalRef;
use openmls::prelude::{
    BasicCredential, Capabilities, Ciphersuite, CredentialType, CredentialWithKey, Extension,
    Extensions, ExternalSender, GroupId, KeyPackage, Lifetime, MlsMessageBodyOut, MlsMessageIn,
    ProcessedMessageContent, Proposal, ProtocolVersion, Welcome,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::OpenMlsProvider;
use tls_codec::{Deserialize, DeserializeBytes, Serialize, VLBytes};

/// The DAVE protocol version this client speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// DAVE v1's ciphersuite (`MLS_128_DHKEMP256_AES128GCM_SHA256_P256`).
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMP256_AES128GCM_SHA256_P256;

/// op 27's operation types.
pub const PROPOSALS_APPEND: u8 = 0;
/// op 27 revoke: the vector holds `ProposalRef`s.
pub const PROPOSALS_REVOKE: u8 = 1;

/// Where the member stands (davey's `SessionStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// No group (no external sender yet, or reset).
    Inactive,
    /// Its own group of one at epoch 0, waiting to commit or be welcomed.
    Pending,
    /// It sent a commit and waits for the gateway's op 29.
    AwaitingResponse,
    /// In the call's group.
    Active,
}

/// Why the member could not do what a message asked (the client answers
/// a failed commit or welcome with op 31).
#[derive(Debug, thiserror::Error)]
pub enum DaveError {
    /// Proposals or a commit came before op 25.
    #[error("no group (op 25 not received)")]
    NoGroup,
    /// A welcome came before op 25.
    #[error("no external sender")]
    NoExternalSender,
    /// op 25 or a welcome for a member already in a group.
    #[error("already in a group")]
    AlreadyInGroup,
    /// A commit for a member that is not in the group yet.
    #[error("the group is still pending")]
    PendingGroup,
    /// An Add for a user the gateway did not announce.
    #[error("add proposal for unexpected user {0}")]
    UnexpectedUser(u64),
    /// op 27 with an operation type that is neither append nor revoke.
    #[error("unknown proposals operation {0}")]
    UnknownOperation(u8),
    /// An op 27 message that is no proposal.
    #[error("message is not a proposal")]
    NotProposal,
    /// A commit that is no commit.
    #[error("message is not a commit")]
    NotCommit,
    /// A message for another group.
    #[error("message for another group")]
    WrongGroup,
    /// A welcome whose group context names no, several or another
    /// external sender than op 25's.
    #[error("welcome has an unexpected external sender")]
    UnexpectedExternalSender,
    /// Bytes that do not decode.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// What was being read.
        what: &'static str,
        /// The decoder's complaint.
        detail: String,
    },
    /// openmls refused (signature, epoch, membership...) or failed.
    #[error("MLS: {0}")]
    Mls(String),
}

fn mls<E: std::fmt::Debug>(e: E) -> DaveError {
    DaveError::Mls(format!("{e:?}"))
}

fn malformed(what: &'static str) -> impl FnOnce(tls_codec::Error) -> DaveError {
    move |e| DaveError::Malformed {
        what,
        detail: e.to_string(),
    }
}

/// The user id a basic credential names (8 bytes big-endian), 0 if not.
fn user_of(identity: &[u8]) -> u64 {
    identity.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

/// DAVE v1's leaf capabilities, as davey and libdave make them.
fn capabilities() -> Capabilities {
    Capabilities::builder()
        .versions(vec![ProtocolVersion::Mls10])
        .ciphersuites(vec![CIPHERSUITE])
        .extensions(vec![])
        .proposals(vec![])
        .credentials(vec![CredentialType::Basic])
        .build()
}

/// One user's MLS member in one voice channel's DAVE group.
pub struct DaveClient {
    user_id: u64,
    channel_id: u64,
    provider: OpenMlsRustCrypto,
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
    external_sender: Option<ExternalSender>,
    group: Option<MlsGroup>,
    status: Status,
    ready: bool,
}

impl std::fmt::Debug for DaveClient {
    /// No key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaveClient")
            .field("user_id", &self.user_id)
            .field("channel_id", &self.channel_id)
            .field("status", &self.status)
            .field("epoch", &self.epoch())
            .field("ready", &self.ready)
            .finish_non_exhaustive()
    }
}

impl DaveClient {
    /// User `user_id`'s member for channel `channel_id` (the group id),
    /// with a fresh P-256 signing key.
    pub fn new(user_id: u64, channel_id: u64) -> Result<DaveClient, DaveError> {
        let (signer, credential) = Self::identity(user_id)?;
        Ok(DaveClient {
            user_id,
            channel_id,
            provider: OpenMlsRustCrypto::default(),
            signer,
            credential,
            external_sender: None,
            group: None,
            status: Status::Inactive,
            ready: false,
        })
    }

    fn identity(user_id: u64) -> Result<(SignatureKeyPair, CredentialWithKey), DaveError> {
        let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).map_err(mls)?;
        let credential = CredentialWithKey {
            credential: BasicCredential::new(user_id.to_be_bytes().to_vec()).into(),
            signature_key: signer.public().into(),
        };
        Ok((signer, credential))
    }

    /// The user.
    pub fn user_id(&self) -> u64 {
        self.user_id
    }

    /// Where the member stands.
    pub fn status(&self) -> Status {
        self.status
    }

    /// The group's epoch (0 for the pending group), None without a group.
    pub fn epoch(&self) -> Option<u64> {
        self.group.as_ref().map(|g| g.epoch().as_u64())
    }

    /// In the call's group (a commit or welcome was processed since the
    /// last reset): media could be end-to-end encrypted.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// The users in the group, by leaf (the pending group has only this
    /// one); empty without a group.
    pub fn members(&self) -> Vec<u64> {
        self.group
            .iter()
            .flat_map(|g| g.members())
            .map(|m| user_of(m.credential.serialized_content()))
            .collect()
    }

    /// The member's own leaf, None without a group.
    pub fn own_leaf(&self) -> Option<u32> {
        self.group.as_ref().map(|g| g.own_leaf_index().u32())
    }

    /// Starts over (op 24 epoch 1, or the call left DAVE): the group is
    /// dropped, the keys are new, and with an external sender known a new
    /// pending group is made at once (davey's `reinit`). Send a new
    /// [`key_package`](Self::key_package) after.
    pub fn reset(&mut self) -> Result<(), DaveError> {
        if let Some(mut group) = self.group.take() {
            group.delete(self.provider.storage()).map_err(mls)?;
        }
        self.provider = OpenMlsRustCrypto::default();
        let (signer, credential) = Self::identity(self.user_id)?;
        self.signer = signer;
        self.credential = credential;
        self.status = Status::Inactive;
        self.ready = false;
        if self.external_sender.is_some() {
            self.create_pending_group()?;
        }
        Ok(())
    }

    /// op 26's payload: a new raw TLS `KeyPackage` (basic credential with
    /// the user id, ciphersuite 2, lifetime `0..=u64::MAX`, no
    /// extensions), its private keys kept for the welcome.
    pub fn key_package(&mut self) -> Result<Vec<u8>, DaveError> {
        let mut lifetime = [0u8; 16];
        lifetime[8..].fill(0xff);
        let lifetime = Lifetime::tls_deserialize_exact(lifetime).map_err(malformed("lifetime"))?;
        let bundle = KeyPackage::builder()
            .key_package_extensions(Extensions::empty())
            .leaf_node_capabilities(capabilities())
            .key_package_lifetime(lifetime)
            .build(
                CIPHERSUITE,
                &self.provider,
                &self.signer,
                self.credential.clone(),
            )
            .map_err(mls)?;
        bundle.key_package().tls_serialize_detached().map_err(mls)
    }

    /// op 25: the gateway's external sender; (re)creates the pending group
    /// with it. Refused once in a group (or waiting for its commit).
    pub fn set_external_sender(&mut self, op25: &[u8]) -> Result<(), DaveError> {
        if matches!(self.status, Status::AwaitingResponse | Status::Active) {
            return Err(DaveError::AlreadyInGroup);
        }
        let sender =
            ExternalSender::tls_deserialize_exact(op25).map_err(malformed("external sender"))?;
        if let Some(mut group) = self.group.take() {
            group.delete(self.provider.storage()).map_err(mls)?;
        }
        self.external_sender = Some(sender);
        self.create_pending_group()
    }

    /// The member's own group at epoch 0: group id the channel id (8
    /// bytes big-endian), the external sender as the only group context
    /// extension, the ratchet tree in welcomes, plaintext handshakes.
    fn create_pending_group(&mut self) -> Result<(), DaveError> {
        let Some(sender) = &self.external_sender else {
            return Err(DaveError::NoExternalSender);
        };
        let extensions =
            Extensions::single(Extension::ExternalSenders(vec![sender.clone()])).map_err(mls)?;
        let config = MlsGroupCreateConfig::builder()
            .with_group_context_extensions(extensions)
            .ciphersuite(CIPHERSUITE)
            .capabilities(capabilities())
            .use_ratchet_tree_extension(true)
            .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
            .build();
        let group = MlsGroup::new_with_group_id(
            &self.provider,
            &self.signer,
            &config,
            GroupId::from_slice(&self.channel_id.to_be_bytes()),
            self.credential.clone(),
        )
        .map_err(mls)?;
        self.group = Some(group);
        self.status = Status::Pending;
        Ok(())
    }

    /// op 27 (`u8 operation ‖ <V>vector`): an append's external proposals
    /// are verified (the external sender's signature, the epoch) and kept,
    /// an Add of a user not in `expected_users` refused; a revoke's
    /// references are dropped. Then the pending proposals are committed
    /// (by reference): the op 28 payload, `commit ‖ [welcome]`, the
    /// welcome when the commit adds members. None when nothing is pending.
    pub fn process_proposals(
        &mut self,
        op27: &[u8],
        expected_users: &[u64],
    ) -> Result<Option<Vec<u8>>, DaveError> {
        let Some(group) = &mut self.group else {
            return Err(DaveError::NoGroup);
        };
        let [operation, vector @ ..] = op27 else {
            return Err(DaveError::Malformed {
                what: "proposals",
                detail: "empty".into(),
            });
        };
        let body: Vec<u8> = VLBytes::tls_deserialize_exact(vector)
            .map_err(malformed("proposals"))?
            .into();
        let mut rest: &[u8] = &body;
        match *operation {
            PROPOSALS_APPEND => {
                while !rest.is_empty() {
                    let (message, tail) =
                        MlsMessageIn::tls_deserialize_bytes(rest).map_err(malformed("proposal"))?;
                    rest = tail;
                    let message = message.try_into_protocol_message().map_err(mls)?;
                    let processed = group
                        .process_message(&self.provider, message)
                        .map_err(mls)?;
                    let ProcessedMessageContent::ProposalMessage(proposal) =
                        processed.into_content()
                    else {
                        return Err(DaveError::NotProposal);
                    };
                    if let Proposal::Add(add) = proposal.proposal() {
                        let credential = add.key_package().leaf_node().credential();
                        let user = user_of(credential.serialized_content());
                        if !expected_users.contains(&user) {
                            return Err(DaveError::UnexpectedUser(user));
                        }
                    }
                    group
                        .store_pending_proposal(self.provider.storage(), *proposal)
                        .map_err(mls)?;
                }
            }
            PROPOSALS_REVOKE => {
                while !rest.is_empty() {
                    let (reference, tail) = ProposalRef::tls_deserialize_bytes(rest)
                        .map_err(malformed("proposal ref"))?;
                    rest = tail;
                    group
                        .remove_pending_proposal(self.provider.storage(), &reference)
                        .map_err(mls)?;
                }
            }
            other => return Err(DaveError::UnknownOperation(other)),
        }
        if group.pending_proposals().next().is_none() {
            // Nothing left to commit: back to before the last commit.
            group
                .clear_pending_commit(self.provider.storage())
                .map_err(mls)?;
            if self.status == Status::AwaitingResponse {
                self.status = if self.ready {
                    Status::Active
                } else {
                    Status::Pending
                };
            }
            return Ok(None);
        }
        if group.pending_commit().is_some() {
            group
                .clear_pending_commit(self.provider.storage())
                .map_err(mls)?;
        }
        let (commit, welcome, _group_info) = group
            .commit_to_pending_proposals(&self.provider, &self.signer)
            .map_err(mls)?;
        self.status = Status::AwaitingResponse;
        let mut op28 = commit.tls_serialize_detached().map_err(mls)?;
        if let Some(welcome) = welcome {
            let MlsMessageBodyOut::Welcome(welcome) = welcome.body() else {
                return Err(DaveError::Mls("welcome is no Welcome".into()));
            };
            op28.extend(welcome.tls_serialize_detached().map_err(mls)?);
        }
        Ok(Some(op28))
    }

    /// op 29's commit (after the transition id): this member's own
    /// pending commit is merged, anyone else's processed and merged.
    pub fn process_commit(&mut self, commit: &[u8]) -> Result<(), DaveError> {
        let Some(group) = &mut self.group else {
            return Err(DaveError::NoGroup);
        };
        if self.status == Status::Pending {
            return Err(DaveError::PendingGroup);
        }
        let message = MlsMessageIn::tls_deserialize_exact(commit).map_err(malformed("commit"))?;
        let message = message.try_into_protocol_message().map_err(mls)?;
        if message.group_id().as_slice() != self.channel_id.to_be_bytes() {
            return Err(DaveError::WrongGroup);
        }
        match group.process_message(&self.provider, message) {
            Ok(processed) => match processed.into_content() {
                ProcessedMessageContent::StagedCommitMessage(staged) => group
                    .merge_staged_commit(&self.provider, *staged)
                    .map_err(mls)?,
                _ => return Err(DaveError::NotCommit),
            },
            Err(ProcessMessageError::InvalidCommit(StageCommitError::OwnCommit)) => {
                group.merge_pending_commit(&self.provider).map_err(mls)?
            }
            Err(e) => return Err(mls(e)),
        }
        self.status = Status::Active;
        self.ready = true;
        Ok(())
    }

    /// op 30's welcome (after the transition id): joins the group it
    /// describes, which must name op 25's external sender and nothing
    /// else; the pending group is dropped.
    pub fn process_welcome(&mut self, welcome: &[u8]) -> Result<(), DaveError> {
        if self.group.is_some() && self.status == Status::Active {
            return Err(DaveError::AlreadyInGroup);
        }
        let Some(sender) = &self.external_sender else {
            return Err(DaveError::NoExternalSender);
        };
        let welcome = Welcome::tls_deserialize_exact(welcome).map_err(malformed("welcome"))?;
        let config = MlsGroupJoinConfig::builder()
            .use_ratchet_tree_extension(true)
            .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
            .build();
        let staged = StagedWelcome::build_from_welcome(&self.provider, &config, welcome)
            .map_err(mls)?
            .replace_old_group()
            .build()
            .map_err(mls)?;
        match staged.group_context().extensions().external_senders() {
            Some(senders) if senders.as_slice() == std::slice::from_ref(sender) => {}
            _ => return Err(DaveError::UnexpectedExternalSender),
        }
        if staged.group_context().group_id().as_slice() != self.channel_id.to_be_bytes() {
            return Err(DaveError::WrongGroup);
        }
        // The pending group goes first: it has the same group id, and its
        // storage is the new group's.
        if let Some(mut pending) = self.group.take() {
            pending.delete(self.provider.storage()).map_err(mls)?;
        }
        let group = staged.into_group(&self.provider).map_err(mls)?;
        self.group = Some(group);
        self.status = Status::Active;
        self.ready = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openmls::prelude::hash_ref::make_proposal_ref;
    use openmls::prelude::{
        Credential, ExternalProposal, GroupEpoch, KeyPackageIn, LeafNodeIndex, MlsMessageOut,
        SenderExtensionIndex, SignaturePublicKey,
    };
    use openmls_rust_crypto::RustCrypto;
    use openmls_traits::types::SignatureScheme;

    const CHANNEL: u64 = 424242;
    const A: u64 = 1001;
    const B: u64 = 1002;
    const C: u64 = 1003;

    /// The gateway's part, written here from openmls (the server's own
    /// primitives are in `control`, which is tested against this client
    /// in control/tests/pair/dave.rs).
    struct Gateway {
        signer: SignatureKeyPair,
        credential: Credential,
    }

    impl Gateway {
        fn new() -> Gateway {
            Gateway {
                signer: SignatureKeyPair::new(SignatureScheme::ECDSA_SECP256R1_SHA256).unwrap(),
                credential: BasicCredential::new(vec![0, 1, 1, 0]).into(),
            }
        }

        fn op25(&self) -> Vec<u8> {
            let public = SignaturePublicKey::from(self.signer.to_public_vec());
            ExternalSender::new(public, self.credential.clone())
                .tls_serialize_detached()
                .unwrap()
        }

        /// An op 27 append of `messages`, with their refs.
        fn append(messages: Vec<MlsMessageOut>) -> (Vec<u8>, Vec<Vec<u8>>) {
            let mut body = Vec::new();
            let mut refs = Vec::new();
            for m in messages {
                let bytes = m.tls_serialize_detached().unwrap();
                let r = make_proposal_ref(&bytes[2..], CIPHERSUITE, &RustCrypto::default());
                refs.push(r.unwrap().as_slice().to_vec());
                body.extend(bytes);
            }
            let mut op27 = vec![PROPOSALS_APPEND];
            op27.extend(VLBytes::new(body).tls_serialize_detached().unwrap());
            (op27, refs)
        }

        fn add(&self, epoch: u64, packages: &[&[u8]]) -> (Vec<u8>, Vec<Vec<u8>>) {
            let messages = packages
                .iter()
                .map(|kp| {
                    let kp = KeyPackageIn::tls_deserialize_exact(kp)
                        .unwrap()
                        .validate(&RustCrypto::default(), ProtocolVersion::Mls10)
                        .unwrap();
                    ExternalProposal::new_add::<OpenMlsRustCrypto>(
                        kp,
                        GroupId::from_slice(&CHANNEL.to_be_bytes()),
                        GroupEpoch::from(epoch),
                        &self.signer,
                        SenderExtensionIndex::new(0),
                    )
                    .unwrap()
                })
                .collect();
            Self::append(messages)
        }

        fn remove(&self, epoch: u64, leaf: u32) -> (Vec<u8>, Vec<Vec<u8>>) {
            let m = ExternalProposal::new_remove::<OpenMlsRustCrypto>(
                LeafNodeIndex::new(leaf),
                GroupId::from_slice(&CHANNEL.to_be_bytes()),
                GroupEpoch::from(epoch),
                &self.signer,
                SenderExtensionIndex::new(0),
            )
            .unwrap();
            Self::append(vec![m])
        }

        fn revoke(refs: &[Vec<u8>]) -> Vec<u8> {
            let mut body = Vec::new();
            for r in refs {
                body.extend(VLBytes::new(r.clone()).tls_serialize_detached().unwrap());
            }
            let mut op27 = vec![PROPOSALS_REVOKE];
            op27.extend(VLBytes::new(body).tls_serialize_detached().unwrap());
            op27
        }
    }

    /// An op 28 payload split into the commit and the welcome.
    fn split(op28: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
        let mut rest = op28;
        MlsMessageIn::tls_deserialize(&mut rest).unwrap();
        let commit = op28[..op28.len() - rest.len()].to_vec();
        (commit, (!rest.is_empty()).then(|| rest.to_vec()))
    }

    fn member(user: u64, gateway: &Gateway) -> (DaveClient, Vec<u8>) {
        let mut m = DaveClient::new(user, CHANNEL).unwrap();
        let kp = m.key_package().unwrap();
        m.set_external_sender(&gateway.op25()).unwrap();
        assert_eq!(m.status(), Status::Pending);
        assert_eq!(m.epoch(), Some(0));
        (m, kp)
    }

    #[test]
    fn key_package_is_what_the_gateway_requires() {
        let mut m = DaveClient::new(A, CHANNEL).unwrap();
        let bytes = m.key_package().unwrap();
        // Raw KeyPackage: mls10, ciphersuite 2.
        assert_eq!(&bytes[..4], &[0, 1, 0, 2]);
        let kp = KeyPackageIn::tls_deserialize_exact(&bytes)
            .unwrap()
            .validate(&RustCrypto::default(), ProtocolVersion::Mls10)
            .unwrap();
        let identity = kp.leaf_node().credential().serialized_content();
        assert_eq!(identity, A.to_be_bytes());
        assert_eq!(kp.life_time().not_before(), 0);
        assert_eq!(kp.life_time().not_after(), u64::MAX);
        assert!(kp.extensions().iter().next().is_none());
        // A new one each time.
        assert_ne!(m.key_package().unwrap(), bytes);
    }

    #[test]
    fn founding_adding_revoking_removing() {
        let gw = Gateway::new();
        let (mut a, kp_a) = member(A, &gw);
        let (mut b, kp_b) = member(B, &gw);
        // Proposals before op 25 have no group to go to.
        let mut late = DaveClient::new(C, CHANNEL).unwrap();
        assert!(matches!(
            late.process_proposals(&gw.add(0, &[&kp_a]).0, &[A]),
            Err(DaveError::NoGroup)
        ));

        // Epoch 0: each founder gets the other's Add; both commit, A wins.
        let (to_a, _) = gw.add(0, &[&kp_b]);
        let (to_b, _) = gw.add(0, &[&kp_a]);
        // An Add of a user the gateway did not announce is refused.
        assert!(matches!(
            a.process_proposals(&to_a, &[C]),
            Err(DaveError::UnexpectedUser(B))
        ));
        let op28_a = a.process_proposals(&to_a, &[B]).unwrap().unwrap();
        let op28_b = b.process_proposals(&to_b, &[A]).unwrap().unwrap();
        assert_eq!(a.status(), Status::AwaitingResponse);
        let (commit_a, welcome_a) = split(&op28_a);
        assert!(split(&op28_b).1.is_some(), "an add carries a welcome");
        // A commit for a member still pending is refused.
        let mut pending = member(C, &gw).0;
        assert!(matches!(
            pending.process_commit(&commit_a),
            Err(DaveError::PendingGroup)
        ));
        a.process_commit(&commit_a).unwrap();
        b.process_welcome(&welcome_a.unwrap()).unwrap();
        for m in [&a, &b] {
            assert!(m.is_ready());
            assert_eq!(m.epoch(), Some(1));
            assert_eq!(m.members(), vec![A, B]);
        }
        assert_eq!((a.own_leaf(), b.own_leaf()), (Some(0), Some(1)));
        // op 25 again once in the group: refused, as davey does.
        assert!(matches!(
            a.set_external_sender(&gw.op25()),
            Err(DaveError::AlreadyInGroup)
        ));

        // C is proposed at epoch 1, revoked (it left), proposed again.
        let (mut c, kp_c) = member(C, &gw);
        let (add_c, refs) = gw.add(1, &[&kp_c]);
        assert!(a.process_proposals(&add_c, &[B, C]).unwrap().is_some());
        let revoke = Gateway::revoke(&refs);
        assert!(a.process_proposals(&revoke, &[B, C]).unwrap().is_none());
        assert_eq!(a.status(), Status::Active);
        let kp_c = {
            c.reset().unwrap();
            assert_eq!(c.status(), Status::Pending, "reset keeps op 25's sender");
            let _ = kp_c;
            c.key_package().unwrap()
        };
        let (add_c, _) = gw.add(1, &[&kp_c]);
        // Proposals for another epoch are refused (openmls checks).
        assert!(b
            .process_proposals(&gw.add(0, &[&kp_c]).0, &[A, C])
            .is_err());
        // Both members commit; B's wins, A drops its own.
        let op28_b = b.process_proposals(&add_c, &[A, C]).unwrap().unwrap();
        a.process_proposals(&add_c, &[B, C]).unwrap().unwrap();
        let (commit_b, welcome_b) = split(&op28_b);
        b.process_commit(&commit_b).unwrap();
        a.process_commit(&commit_b).unwrap();
        c.process_welcome(&welcome_b.unwrap()).unwrap();
        for m in [&a, &b, &c] {
            assert_eq!(m.epoch(), Some(2));
            assert_eq!(m.members(), vec![A, B, C]);
        }
        // A second welcome to a member in the group: refused.
        assert!(c.process_welcome(&split(&op28_b).1.unwrap()).is_err());

        // C leaves: Remove(leaf 2) at epoch 2; no welcome.
        let (rm, _) = gw.remove(2, c.own_leaf().unwrap());
        let op28 = a.process_proposals(&rm, &[B]).unwrap().unwrap();
        // B must have been sent the Remove too: the commit names it by
        // reference only.
        b.process_proposals(&rm, &[A]).unwrap().unwrap();
        let (commit, welcome) = split(&op28);
        assert!(welcome.is_none());
        a.process_commit(&commit).unwrap();
        b.process_commit(&commit).unwrap();
        for m in [&a, &b] {
            assert_eq!(m.epoch(), Some(3));
            assert_eq!(m.members(), vec![A, B]);
        }

        // Sole member reset: a new group from scratch.
        a.reset().unwrap();
        assert!(!a.is_ready());
        assert_eq!((a.status(), a.epoch()), (Status::Pending, Some(0)));
        assert_eq!(a.members(), vec![A]);
    }

    #[test]
    fn forged_and_garbage_input_is_an_error() {
        let gw = Gateway::new();
        let impostor = Gateway::new();
        let (mut a, _) = member(A, &gw);
        let (_, kp_b) = member(B, &gw);
        // Signed by another key than op 25's.
        let (forged, _) = impostor.add(0, &[&kp_b]);
        assert!(a.process_proposals(&forged, &[B]).is_err());
        for bad in [
            &[][..],
            &[0],
            &[2, 0],
            &[0, 0x40],
            &[0, 3, 0, 1, 0],
            &[1, 2, 0x20, 0],
        ] {
            assert!(a.process_proposals(bad, &[B]).is_err(), "{bad:?}");
        }
        assert!(a.set_external_sender(&[0, 1, 2]).is_err());
        assert!(a.process_welcome(&[0, 2, 0]).is_err());
        let mut x: u32 = 0x1234_5678;
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = a.process_proposals(&bytes, &[B]);
            let _ = a.process_commit(&bytes);
            let _ = a.process_welcome(&bytes);
        }
        // Still able to found a group afterwards.
        assert!(a
            .process_proposals(&gw.add(0, &[&kp_b]).0, &[B])
            .unwrap()
            .is_some());
    }
}
