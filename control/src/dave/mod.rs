//! DAVE, Discord's audio/video end-to-end encryption: the voice server's
//! part (DESIGN.md "Voice gateway", DAVE.md). The clients encrypt the media;
//! the server is the MLS delivery service and the group's *external
//! sender*: it hands each member the external sender (op 25), proposes
//! members in and out of the channel's MLS group (op 27) from their key
//! packages (op 26), picks the first valid commit of each epoch (op 28),
//! announces it (op 29) with welcomes for the joiners (op 30), and moves
//! the call from one epoch or protocol version to the next once every
//! member is ready (ops 21-24). It never holds a key that opens the media.
//!
//! [`Call`] is one channel's state machine, sans-IO: time comes in as an
//! argument and what members must hear comes out as typed [`DaveNotice`]s
//! for their sessions (the registry numbers them in each session's stream,
//! the gateway turns them into frames). [`mls`] has the MLS structures
//! (openmls): the external sender, key packages, proposals, commits.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub mod mls;

use mls::{ExternalSender, ValidKeyPackage};

/// The DAVE protocol version this server speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// Largest key package accepted, bytes (a real one is about 400).
pub const MAX_KEY_PACKAGE: usize = 4096;

/// How long a transition waits for every member's Transition Ready before
/// it is executed anyway.
pub const TRANSITION_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether calls are end-to-end encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DaveMode {
    /// Never: Session Description says version 0, DAVE ops are ignored.
    Off,
    /// When every member of the call supports it (a member without it
    /// downgrades the call to 0 while it is there). The server's default.
    #[default]
    On,
    /// Always: a client without DAVE is closed with 4017.
    Required,
}

impl std::str::FromStr for DaveMode {
    type Err = String;

    fn from_str(s: &str) -> Result<DaveMode, String> {
        match s {
            "off" => Ok(DaveMode::Off),
            "on" => Ok(DaveMode::On),
            "required" => Ok(DaveMode::Required),
            other => Err(format!("unknown DAVE mode {other:?} (off, on, required)")),
        }
    }
}

/// What a member's session must be told; the gateway turns each into its
/// op (21, 22, 24 as JSON; 25, 27, 29, 30 as binary frames).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DaveNotice {
    /// Op 21.
    PrepareTransition {
        /// The version after it.
        protocol_version: u16,
        /// The transition (0: at once).
        transition_id: u16,
    },
    /// Op 22.
    ExecuteTransition {
        /// The transition.
        transition_id: u16,
    },
    /// Op 24.
    PrepareEpoch {
        /// The version.
        protocol_version: u16,
        /// The epoch (1: a new group).
        epoch: u64,
    },
    /// Op 25: the external sender's payload.
    ExternalSender(Vec<u8>),
    /// Op 27: proposals to append or revoke.
    Proposals(Vec<u8>),
    /// Op 29.
    AnnounceCommit {
        /// The transition that takes the group to the new epoch.
        transition_id: u16,
        /// The winning commit, as its committer sent it.
        commit: Vec<u8>,
    },
    /// Op 30.
    Welcome {
        /// The transition.
        transition_id: u16,
        /// The welcome, as the committer sent it.
        welcome: Vec<u8>,
    },
}

/// Why a member's DAVE message was refused (counted, and the member is
/// re-added where the protocol says so; never a close).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DaveError {
    /// The call is not end-to-end encrypted now.
    #[error("DAVE is not active in this call")]
    Inactive,
    /// The session is not a member of the call.
    #[error("not a member of the call")]
    NotMember,
    /// MLS rejected the message.
    #[error(transparent)]
    Mls(#[from] mls::MlsError),
    /// A commit for another epoch, or one that arrived after the epoch's
    /// winner.
    #[error("commit for epoch {got}, expected {expected}")]
    WrongEpoch {
        /// The commit's epoch.
        got: u64,
        /// The group's.
        expected: u64,
    },
    /// The commit does not commit exactly the proposals this member was
    /// sent, or its welcome does not match its adds.
    #[error("commit does not match the proposals")]
    WrongProposals,
    /// A key package from a member that has one pending or is in the
    /// group (it gets to send one again after op 24 or op 31), or one
    /// larger than any real key package.
    #[error("key package not expected")]
    Unexpected,
}

/// One member of the call.
#[derive(Debug)]
struct Member {
    user: u64,
    /// Its latest valid key package, until it is in the group.
    key_package: Option<ValidKeyPackage>,
    /// In the MLS group (welcomed, or the first committer).
    in_group: bool,
    /// The proposals sent to it in this epoch and not revoked, by
    /// reference: exactly what its commit must commit.
    proposed: BTreeMap<Vec<u8>, Proposed>,
}

impl Member {
    fn new(user: u64) -> Member {
        Member {
            user,
            key_package: None,
            in_group: false,
            proposed: BTreeMap::new(),
        }
    }

    /// Whom the proposals sent to it add.
    fn adding(&self) -> impl Iterator<Item = &String> {
        self.proposed.values().filter_map(|p| match p {
            Proposed::Add(sid) => Some(sid),
            Proposed::Remove(_) => None,
        })
    }
}

/// What one proposal does.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Proposed {
    /// Adds this session's key package.
    Add(String),
    /// Removes this leaf.
    Remove(u32),
}

/// A transition in progress: who still owes Transition Ready.
#[derive(Debug, Clone)]
struct Transition {
    id: u16,
    waiting: BTreeSet<String>,
    /// Everyone told to prepare it (told to execute it).
    told: BTreeSet<String>,
    deadline: Instant,
}

/// One channel's DAVE state: the call's protocol version, its MLS group as
/// the delivery service sees it (epoch, who is in it at which leaf), the
/// proposals in flight and the transition in progress.
#[derive(Debug)]
pub struct Call {
    group_id: u64,
    sender: Arc<ExternalSender>,
    mode: DaveMode,
    /// Members by session id, with their DAVE support.
    members: BTreeMap<String, Member>,
    /// Members that cannot do DAVE (their presence keeps the call at 0).
    plain: BTreeSet<String>,
    /// The call's protocol version now.
    version: u16,
    /// The group exists (a first commit was announced).
    established: bool,
    /// The group's epoch (0 until established).
    epoch: u64,
    /// Leaf index → user, by RFC 9420's rules as commits apply
    /// ([`mls::apply_to_roster`]); a user has one session per channel.
    roster: Vec<Option<u64>>,
    transition: Option<Transition>,
    last_transition: u16,
    out: VecDeque<(String, DaveNotice)>,
}

impl Call {
    /// The call of channel `group_id` (its MLS group id), with `sender` as
    /// the group's external sender.
    pub fn new(group_id: u64, sender: Arc<ExternalSender>, mode: DaveMode) -> Call {
        // An empty call runs what its mode wants: its first DAVE member
        // gets the external sender, not an upgrade (op 24) from a version
        // 0 nobody was in.
        let version = match mode {
            DaveMode::Off => 0,
            DaveMode::On | DaveMode::Required => PROTOCOL_VERSION,
        };
        Call {
            group_id,
            sender,
            mode,
            members: BTreeMap::new(),
            plain: BTreeSet::new(),
            version,
            established: false,
            epoch: 0,
            roster: Vec::new(),
            transition: None,
            last_transition: 0,
            out: VecDeque::new(),
        }
    }

    /// The call's protocol version now (Session Description's
    /// `dave_protocol_version` for a member keyed now).
    pub fn version(&self) -> u16 {
        self.version
    }

    /// What the members must be told, in order.
    pub fn drain(&mut self) -> impl Iterator<Item = (String, DaveNotice)> + '_ {
        self.out.drain(..)
    }

    /// The version the call should run: DAVE when on and every member
    /// supports it.
    fn wanted_version(&self) -> u16 {
        match self.mode {
            DaveMode::Off => 0,
            _ if self.plain.is_empty() => PROTOCOL_VERSION,
            _ => 0,
        }
    }

    /// A member was keyed (Select Protocol): returns the version its
    /// Session Description announces. A DAVE member of a DAVE call gets the
    /// external sender right after (it answers with its key package); a
    /// member without DAVE joining a DAVE call downgrades it.
    pub fn join(&mut self, session: &str, user: u64, max_version: u16, now: Instant) -> u16 {
        self.leave(session, now);
        if max_version >= PROTOCOL_VERSION {
            self.members.insert(session.to_owned(), Member::new(user));
        } else {
            self.plain.insert(session.to_owned());
        }
        let wanted = self.wanted_version();
        if wanted != self.version {
            self.change_version(wanted, now);
        } else if self.version == PROTOCOL_VERSION {
            let payload = self.sender.payload();
            self.tell(session, DaveNotice::ExternalSender(payload));
        }
        self.version
    }

    /// The call rebuilt after a control restart, with the members that
    /// came back (session, user, Identify's `max_dave_protocol_version`):
    /// the group they had is not known here, nor is the external sender
    /// they were given, so the DAVE members found a new one (op 24 epoch 1
    /// and this server's external sender, as after an upgrade) once they
    /// resume.
    pub fn restored(&mut self, members: &[(String, u64, u16)]) {
        for (session, user, max_version) in members {
            if *max_version >= PROTOCOL_VERSION {
                self.members.insert(session.clone(), Member::new(*user));
            } else {
                self.plain.insert(session.clone());
            }
        }
        self.version = self.wanted_version();
        if self.version == PROTOCOL_VERSION {
            let all: Vec<String> = self.members.keys().cloned().collect();
            self.restart_members(&all);
        }
    }

    /// A restored member whose Resume skipped past what the restore queued
    /// for it (it had heard more than the save kept): told again to start a
    /// new group.
    pub fn restart_member(&mut self, session: &str) {
        if self.version == PROTOCOL_VERSION && self.members.contains_key(session) {
            self.restart_members(&[session.to_owned()]);
        }
    }

    /// The member left the call: out of the group (a removal for the
    /// others to commit), its proposals revoked; the last member without
    /// DAVE leaving upgrades the call.
    pub fn leave(&mut self, session: &str, now: Instant) {
        if self.plain.remove(session) {
            if let Some(t) = &mut self.transition {
                t.waiting.remove(session);
                t.told.remove(session);
            }
            let wanted = self.wanted_version();
            if wanted != self.version {
                self.change_version(wanted, now);
            }
            return;
        }
        let Some(gone) = self.members.remove(session) else {
            return;
        };
        if let Some(t) = &mut self.transition {
            t.waiting.remove(session);
            t.told.remove(session);
        }
        // Proposals that would add it are revoked where they were sent.
        let mut revoke: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
        let adds_it = Proposed::Add(session.to_owned());
        for (sid, m) in &mut self.members {
            let refs: Vec<Vec<u8>> = m
                .proposed
                .iter()
                .filter(|(_, p)| **p == adds_it)
                .map(|(r, _)| r.clone())
                .collect();
            for r in &refs {
                m.proposed.remove(r);
            }
            if !refs.is_empty() {
                revoke.insert(sid.clone(), refs);
            }
        }
        for (sid, refs) in revoke {
            self.tell(&sid, DaveNotice::Proposals(mls::revoke_payload(&refs)));
        }
        if self.version != PROTOCOL_VERSION || !gone.in_group {
            self.check_ready();
            return;
        }
        let leaf = self.roster.iter().position(|u| *u == Some(gone.user));
        let in_group: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.in_group)
            .map(|(s, _)| s.clone())
            .collect();
        match (leaf, in_group.len()) {
            (_, 0) => self.reset_group(),
            (_, 1) => {
                // A sole member starts a new group when the next one comes.
                self.reset_group();
                self.restart_members(&in_group);
            }
            (Some(leaf), _) => {
                let leaf = leaf as u32;
                match mls::remove_proposals(&self.sender, self.group_id, self.epoch, &[leaf]) {
                    Ok(p) => {
                        for sid in &in_group {
                            if let Some(m) = self.members.get_mut(sid) {
                                for r in &p.refs {
                                    m.proposed.insert(r.clone(), Proposed::Remove(leaf));
                                }
                            }
                            self.tell(sid, DaveNotice::Proposals(p.payload.clone()));
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "DAVE remove proposal failed"),
                }
            }
            (None, _) => {}
        }
        self.check_ready();
    }

    /// Op 26: a member's key package; it is proposed to the group (or to
    /// the other founders) as soon as there is someone to commit it.
    pub fn key_package(&mut self, session: &str, bytes: &[u8]) -> Result<(), DaveError> {
        if self.version != PROTOCOL_VERSION {
            return Err(self.refuse(DaveError::Inactive));
        }
        let Some(member) = self.members.get(session) else {
            return Err(self.refuse(DaveError::NotMember));
        };
        // One per member until the group takes it: a second one would
        // leave Adds of the first in flight that no commit can match (and
        // each one costs every member a proposal in its resume buffer).
        if member.in_group || member.key_package.is_some() || bytes.len() > MAX_KEY_PACKAGE {
            return Err(self.refuse(DaveError::Unexpected));
        }
        let kp = match mls::validate_key_package(bytes, member.user) {
            Ok(kp) => kp,
            Err(e) => return Err(self.refuse(e.into())),
        };
        if let Some(m) = self.members.get_mut(session) {
            m.key_package = Some(kp);
        }
        self.propose();
        Ok(())
    }

    /// Sends the Add proposals nobody has been sent yet: before the group
    /// exists, each founder gets the others' Adds (epoch 0); once it
    /// exists, its members get the Adds of everyone waiting (this epoch).
    fn propose(&mut self) {
        let waiting: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| !m.in_group && m.key_package.is_some())
            .map(|(s, _)| s.clone())
            .collect();
        let recipients: Vec<String> = if self.established {
            self.members
                .iter()
                .filter(|(_, m)| m.in_group)
                .map(|(s, _)| s.clone())
                .collect()
        } else {
            waiting.clone()
        };
        for to in recipients {
            let already: BTreeSet<String> = self.members[&to].adding().cloned().collect();
            let new: Vec<String> = waiting
                .iter()
                .filter(|w| **w != to && !already.contains(*w))
                .cloned()
                .collect();
            if new.is_empty() {
                continue;
            }
            let packages: Vec<&ValidKeyPackage> = new
                .iter()
                .filter_map(|w| self.members[w].key_package.as_ref())
                .collect();
            let proposals =
                match mls::add_proposals(&self.sender, self.group_id, self.epoch, &packages) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(error = %e, "DAVE add proposal failed");
                        continue;
                    }
                };
            if let Some(m) = self.members.get_mut(&to) {
                for (r, whom) in proposals.refs.iter().zip(&new) {
                    m.proposed.insert(r.clone(), Proposed::Add(whom.clone()));
                }
            }
            self.tell(&to, DaveNotice::Proposals(proposals.payload));
        }
    }

    /// Op 28: a member's commit (and welcome). The first valid one of the
    /// epoch wins: announced to the group (the committer alone when it
    /// founds the group) with welcomes to the members it adds, under a new
    /// transition; later ones for the same epoch are dropped.
    pub fn commit(&mut self, session: &str, bytes: &[u8], now: Instant) -> Result<(), DaveError> {
        if self.version != PROTOCOL_VERSION {
            return Err(self.refuse(DaveError::Inactive));
        }
        let Some(member) = self.members.get(session) else {
            return Err(self.refuse(DaveError::NotMember));
        };
        let commit = match mls::parse_commit_welcome(bytes, self.group_id) {
            Ok(c) => c,
            Err(e) => return Err(self.refuse(e.into())),
        };
        if commit.epoch != self.epoch {
            let e = DaveError::WrongEpoch {
                got: commit.epoch,
                expected: self.epoch,
            };
            return Err(self.refuse(e));
        }
        // It must commit exactly what it was sent, by reference; the adds
        // in the commit's order (they fill the tree in that order).
        let sent: BTreeSet<&Vec<u8>> = member.proposed.keys().collect();
        let committed: BTreeSet<&Vec<u8>> = commit.proposal_refs.iter().collect();
        let founder = !self.established;
        let sender_ok = if founder {
            !member.in_group
        } else {
            member.in_group
                && self.roster.get(commit.sender_leaf as usize) == Some(&Some(member.user))
        };
        let (mut added, mut removed) = (Vec::new(), Vec::new());
        for r in &commit.proposal_refs {
            match member.proposed.get(r) {
                Some(Proposed::Add(sid)) => added.push(sid.clone()),
                Some(Proposed::Remove(leaf)) => removed.push(*leaf),
                None => {}
            }
        }
        // The welcome must be for exactly the key packages it adds.
        let welcomed: BTreeSet<&[u8]> = commit
            .welcome_key_packages
            .iter()
            .map(Vec::as_slice)
            .collect();
        let adding: BTreeSet<&[u8]> = added
            .iter()
            .filter_map(|sid| self.members.get(sid)?.key_package.as_ref())
            .map(ValidKeyPackage::reference)
            .collect();
        if commit.inline_proposals
            || committed.is_empty()
            || welcomed != adding
            || adding.len() != added.len()
            || sent != committed
            || commit.proposal_refs.len() != committed.len()
            || !sender_ok
            || added.is_empty() != commit.welcome.is_none()
        {
            return Err(self.refuse(DaveError::WrongProposals));
        }
        // Before the commit: who hears it.
        let announce_to: Vec<String> = if founder {
            vec![session.to_owned()]
        } else {
            self.members
                .iter()
                .filter(|(_, m)| m.in_group)
                .map(|(s, _)| s.clone())
                .collect()
        };
        if founder {
            self.roster = vec![Some(member.user)];
        }
        let added_users: Vec<u64> = added
            .iter()
            .filter_map(|sid| self.members.get(sid).map(|m| m.user))
            .collect();
        mls::apply_to_roster(&mut self.roster, &removed, &added_users);
        self.settle();
        let id = self.next_transition();
        let mut told = BTreeSet::new();
        for sid in &announce_to {
            let notice = DaveNotice::AnnounceCommit {
                transition_id: id,
                commit: commit.commit.clone(),
            };
            self.tell(sid, notice);
            told.insert(sid.clone());
        }
        if let Some(welcome) = &commit.welcome {
            for sid in &added {
                let notice = DaveNotice::Welcome {
                    transition_id: id,
                    welcome: welcome.clone(),
                };
                self.tell(sid, notice);
                told.insert(sid.clone());
            }
        }
        self.epoch += 1;
        self.established = true;
        if founder {
            if let Some(m) = self.members.get_mut(session) {
                m.in_group = true;
            }
        }
        for sid in &added {
            if let Some(m) = self.members.get_mut(sid) {
                m.in_group = true;
                m.key_package = None;
            }
        }
        // A new epoch: what was proposed for the old one is void.
        for m in self.members.values_mut() {
            m.proposed.clear();
        }
        self.transition = Some(Transition {
            id,
            waiting: told.clone(),
            told,
            deadline: now + TRANSITION_TIMEOUT,
        });
        // Members that came while this epoch was decided are proposed for
        // the next one.
        self.propose();
        Ok(())
    }

    /// Op 23: the member is ready for `transition_id`.
    pub fn ready(&mut self, session: &str, transition_id: u16) {
        if let Some(t) = &mut self.transition {
            if t.id == transition_id {
                t.waiting.remove(session);
            }
        }
        self.check_ready();
    }

    /// Op 31: the member could not process a commit or welcome: it is taken
    /// out of the group and proposed again with the key package it sends
    /// next.
    pub fn invalid(&mut self, session: &str, user: u64, now: Instant) {
        // Only from a member that had a commit or welcome to process.
        let told = self
            .transition
            .as_ref()
            .is_some_and(|t| t.told.contains(session));
        let in_group = self.members.get(session).is_some_and(|m| m.in_group);
        if self.version != PROTOCOL_VERSION || !(told || in_group) {
            return;
        }
        self.leave(session, now);
        self.members.insert(session.to_owned(), Member::new(user));
    }

    /// When [`Call::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.transition.as_ref().map(|t| t.deadline)
    }

    /// A transition whose members did not all say ready in time is
    /// executed anyway.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.transition.as_ref().is_some_and(|t| now >= t.deadline) {
            if let Some(t) = &mut self.transition {
                t.waiting.clear();
            }
            self.check_ready();
        }
    }

    /// Executes a transition still pending before another one starts:
    /// members must never be left holding one that no op 22 ends.
    fn settle(&mut self) {
        if let Some(t) = &mut self.transition {
            t.waiting.clear();
        }
        if let Some(t) = self.transition.take() {
            for sid in &t.told {
                let notice = DaveNotice::ExecuteTransition {
                    transition_id: t.id,
                };
                self.tell(sid, notice);
            }
        }
    }

    /// Executes the transition once nobody owes Transition Ready.
    fn check_ready(&mut self) {
        let Some(t) = self.transition.take_if(|t| t.waiting.is_empty()) else {
            return;
        };
        for sid in &t.told {
            self.tell(
                sid,
                DaveNotice::ExecuteTransition {
                    transition_id: t.id,
                },
            );
        }
    }

    /// Moves the call to `version`: down to 0 (a member without DAVE
    /// joined) through a prepared transition; up to DAVE by starting a new
    /// group at epoch 1 (op 24, then the external sender: members answer
    /// with key packages and the founders' commit carries the transition).
    fn change_version(&mut self, version: u16, now: Instant) {
        self.settle();
        let everyone: Vec<String> = self
            .members
            .keys()
            .chain(self.plain.iter())
            .cloned()
            .collect();
        self.version = version;
        if version == 0 && self.members.is_empty() {
            // Nobody to take out of a group.
            self.reset_group();
        } else if version == 0 {
            let id = self.next_transition();
            for sid in &everyone {
                let notice = DaveNotice::PrepareTransition {
                    protocol_version: 0,
                    transition_id: id,
                };
                self.tell(sid, notice);
            }
            let dave: BTreeSet<String> = self.members.keys().cloned().collect();
            self.transition = Some(Transition {
                id,
                waiting: dave.clone(),
                told: everyone.into_iter().collect(),
                deadline: now + TRANSITION_TIMEOUT,
            });
            self.reset_group();
            self.check_ready();
        } else {
            self.reset_group();
            let members: Vec<String> = self.members.keys().cloned().collect();
            self.restart_members(&members);
        }
    }

    /// Tells `members` a new group starts (op 24, epoch 1) and hands them
    /// the external sender again: each answers with a fresh key package.
    fn restart_members(&mut self, members: &[String]) {
        let payload = self.sender.payload();
        for sid in members {
            if let Some(m) = self.members.get_mut(sid) {
                m.in_group = false;
                m.key_package = None;
            }
            self.tell(
                sid,
                DaveNotice::PrepareEpoch {
                    protocol_version: PROTOCOL_VERSION,
                    epoch: 1,
                },
            );
            self.tell(sid, DaveNotice::ExternalSender(payload.clone()));
        }
    }

    /// Forgets the group: the next commit founds a new one.
    fn reset_group(&mut self) {
        self.established = false;
        self.epoch = 0;
        self.roster.clear();
        for m in self.members.values_mut() {
            m.in_group = false;
            m.proposed.clear();
        }
    }

    fn next_transition(&mut self) -> u16 {
        self.last_transition = match self.last_transition.wrapping_add(1) {
            0 => 1,
            n => n,
        };
        self.last_transition
    }

    fn tell(&mut self, session: &str, notice: DaveNotice) {
        self.out.push_back((session.to_owned(), notice));
    }

    fn refuse(&mut self, e: DaveError) -> DaveError {
        tracing::debug!(group = self.group_id, error = %e, "DAVE message refused");
        e
    }
}
