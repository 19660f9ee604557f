//! A frame to its bytes and back (PROTOCOL.md §4.2): fixed-size fields,
//! zero-padded slots, and a reader that must consume the whole body.

use super::*;
use crate::core::coding::{
    BatchId, Coding, CodingField, FormId, MAX_CODINGS, MAX_FIELD_VALUES, MAX_FORM_FIELDS, Month,
};

/// Bytes of a label slot: length u8 and [`MAX_LABEL_LEN`] bytes.
const LABEL_SLOT: usize = 1 + MAX_LABEL_LEN;
/// Bytes of one coding: year u16, month u8, a value per field slot.
const CODING_LEN: usize = 3 + MAX_FORM_FIELDS;

pub(super) fn body_len(kind: u8) -> Option<usize> {
    Some(match kind {
        kind::HELLO => 2,
        kind::WELCOME => 4 + 2 * MAX_LANGUAGES + 1 + 16,
        kind::QUEUED => 8,
        kind::PAIRED => 4 + 16 + 32 + 2 + 2,
        kind::FORWARD => 4 + BLOB_LEN,
        kind::END => 4 + 1,
        kind::TOPIC => 2 + 2 * LABEL_SLOT,
        kind::JOIN => 4 + 8,
        kind::UNAVAILABLE => 1 + 8,
        kind::STATUS => 3 + 2 * MAX_TOPICS + 1 + 2 * MAX_LANGUAGES,
        kind::QUEUE_STATS => 1 + 4 * (MAX_TOPICS + 1),
        kind::TRANSFER => 4 + 1 + LABEL_SLOT,
        kind::TRANSFER_REFUSED => 4 + 1,
        kind::RESUME | kind::JOINED => 32,
        kind::RESUMED | kind::PEER_AWAY | kind::PEER_BACK => 4,
        kind::RESUME_FAILED => 1,
        kind::COLLEAGUE => 1 + LABEL_SLOT,
        kind::CHALLENGE => 1 + 16,
        kind::PROOF => 8,
        kind::FORM_ASK => 1,
        kind::FORM_FIELD => 8 + 1 + 1 + LABEL_SLOT + 1 + MAX_FIELD_VALUES * LABEL_SLOT,
        kind::CODINGS => 16 + 8 + 1 + MAX_CODINGS * CODING_LEN,
        kind::CODINGS_RESULT => 16 + 1,
        _ => return None,
    })
}

/// Appends fixed-size fields; lists and labels are zero-padded slots.
struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    fn zeros(&mut self, n: usize) {
        self.0.resize(self.0.len() + n, 0);
    }
    /// Length u8 and the label, zero-padded to [`MAX_LABEL_LEN`]; a
    /// [`Label`] always fits.
    fn label(&mut self, label: &Label) {
        let b = label.as_str().as_bytes();
        self.u8(b.len() as u8);
        self.bytes(b);
        self.zeros(MAX_LABEL_LEN - b.len());
    }
    fn language(&mut self, language: Option<Language>) {
        self.bytes(&language.map_or([0, 0], |l| l.0));
    }
    fn languages(&mut self, langs: &[Language]) {
        let n = langs.len().min(MAX_LANGUAGES);
        for l in &langs[..n] {
            self.bytes(&l.0);
        }
        self.zeros(2 * (MAX_LANGUAGES - n));
    }
}

/// Reads fixed-size fields from a body whose length was already checked,
/// and must then [`Reader::finish`] it (as rustls's codec does).
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    /// Proves the whole body was read.
    fn finish(&self) -> Result<(), FrameError> {
        match self.0.len() {
            0 => Ok(()),
            _ => Err(FrameError::BadField("trailing bytes")),
        }
    }

    fn take(&mut self, n: usize) -> Result<&[u8], FrameError> {
        if self.0.len() < n {
            return Err(FrameError::BadField("length"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, FrameError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], FrameError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn chat(&mut self) -> Result<ChatNumber, FrameError> {
        ChatNumber::new(self.u32()?).ok_or(FrameError::BadField("chat"))
    }
    fn zeros(&mut self, n: usize, field: &'static str) -> Result<(), FrameError> {
        match self.take(n)?.iter().all(|b| *b == 0) {
            true => Ok(()),
            false => Err(FrameError::BadField(field)),
        }
    }
    fn label(&mut self, field: &'static str) -> Result<Label, FrameError> {
        let len = self.u8()? as usize;
        if len > MAX_LABEL_LEN {
            return Err(FrameError::BadField(field));
        }
        let text = std::str::from_utf8(self.take(len)?).map_err(|_| FrameError::BadField(field))?;
        let label = Label::new(text).map_err(|_| FrameError::BadField(field))?;
        self.zeros(MAX_LABEL_LEN - len, field)?;
        Ok(label)
    }
    fn language(&mut self) -> Result<Language, FrameError> {
        let b = self.take(2)?;
        Language::new([b[0], b[1]]).ok_or(FrameError::BadField("language"))
    }
    /// A language slot that may be `00 00` (none).
    fn optional_language(&mut self) -> Result<Option<Language>, FrameError> {
        let b = self.take(2)?;
        match [b[0], b[1]] {
            [0, 0] => Ok(None),
            pair => Ok(Some(
                Language::new(pair).ok_or(FrameError::BadField("language"))?,
            )),
        }
    }
    fn pow(&mut self) -> Result<PowChallenge, FrameError> {
        let difficulty = self.u8()?;
        if difficulty > MAX_POW_DIFFICULTY {
            return Err(FrameError::BadField("difficulty"));
        }
        let mut nonce = [0u8; 16];
        nonce.copy_from_slice(self.take(16)?);
        Ok(PowChallenge { difficulty, nonce })
    }
    /// `count` languages, then zeroed slots up to [`MAX_LANGUAGES`].
    fn languages(&mut self, count: usize) -> Result<Vec<Language>, FrameError> {
        if count > MAX_LANGUAGES {
            return Err(FrameError::BadField("language count"));
        }
        let langs = (0..count)
            .map(|_| self.language())
            .collect::<Result<_, _>>()?;
        self.zeros(2 * (MAX_LANGUAGES - count), "languages")?;
        Ok(langs)
    }
    fn topic(&mut self) -> Result<Option<TopicId>, FrameError> {
        Ok(TopicId::new(self.u16()?))
    }
}

impl Frame {
    pub fn kind(&self) -> u8 {
        match self {
            Frame::Hello { .. } => kind::HELLO,
            Frame::Welcome { .. } => kind::WELCOME,
            Frame::Queued { .. } => kind::QUEUED,
            Frame::Paired { .. } => kind::PAIRED,
            Frame::Forward { .. } => kind::FORWARD,
            Frame::End { .. } => kind::END,
            Frame::Topic { .. } => kind::TOPIC,
            Frame::Join { .. } => kind::JOIN,
            Frame::Unavailable { .. } => kind::UNAVAILABLE,
            Frame::Status { .. } => kind::STATUS,
            Frame::QueueStats { .. } => kind::QUEUE_STATS,
            Frame::Transfer { .. } => kind::TRANSFER,
            Frame::TransferRefused { .. } => kind::TRANSFER_REFUSED,
            Frame::Resume { .. } => kind::RESUME,
            Frame::Resumed { .. } => kind::RESUMED,
            Frame::ResumeFailed => kind::RESUME_FAILED,
            Frame::PeerAway { .. } => kind::PEER_AWAY,
            Frame::PeerBack { .. } => kind::PEER_BACK,
            Frame::Joined { .. } => kind::JOINED,
            Frame::Colleague { .. } => kind::COLLEAGUE,
            Frame::Challenge { .. } => kind::CHALLENGE,
            Frame::Proof { .. } => kind::PROOF,
            Frame::FormAsk => kind::FORM_ASK,
            Frame::FormField { .. } => kind::FORM_FIELD,
            Frame::Codings { .. } => kind::CODINGS,
            Frame::CodingsResult { .. } => kind::CODINGS_RESULT,
        }
    }

    /// The encoded length of this frame, header included.
    pub fn encoded_len(&self) -> usize {
        // Every known kind has a body length; `kind()` only returns known kinds.
        HEADER_LEN + body_len(self.kind()).unwrap_or(0)
    }

    /// A FORWARD frame's bytes, written from a borrowed blob: the relay's
    /// fast path forwards without moving the blob into a frame.
    pub fn forward_bytes(chat: ChatNumber, blob: &Blob) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_FRAME_LEN);
        let mut w = Writer(&mut out);
        w.u8(kind::FORWARD);
        w.u16((4 + BLOB_LEN) as u16);
        w.u32(chat.0);
        w.bytes(blob.as_bytes());
        out
    }

    /// Appends the encoded frame to `out`. Lists longer than their slots
    /// are cut; constructors of such frames check their input first.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let kind = self.kind();
        let start = out.len();
        let mut w = Writer(out);
        w.u8(kind);
        w.u16(body_len(kind).unwrap_or(0) as u16);
        match self {
            Frame::Hello { version, role } => {
                w.u8(*version);
                w.u8(role.to_byte());
            }
            Frame::Welcome {
                version,
                role,
                topics,
                languages,
                pow,
            } => {
                w.u8(*version);
                w.u8(role.to_byte());
                w.u8(*topics);
                w.u8(languages.len().min(MAX_LANGUAGES) as u8);
                w.languages(languages);
                w.u8(pow.difficulty);
                w.bytes(&pow.nonce);
            }
            Frame::Queued {
                position,
                estimated_wait_secs,
            } => {
                w.u32(*position);
                w.u32(estimated_wait_secs.unwrap_or(u32::MAX));
            }
            Frame::Paired {
                chat,
                pairing_id,
                resume,
                topic,
                language,
            } => {
                w.u32(chat.0);
                w.bytes(&pairing_id.0);
                w.bytes(&resume.0);
                w.u16(topic.map_or(0, |t| t.0));
                w.language(*language);
            }
            Frame::Forward { chat, blob } => {
                w.u32(chat.0);
                w.bytes(blob.as_bytes());
            }
            Frame::End { chat, reason } => {
                w.u32(chat.0);
                w.u8(reason.to_byte());
            }
            Frame::Topic {
                id,
                label_nl,
                label_en,
            } => {
                w.u16(id.0);
                w.label(label_nl);
                w.label(label_en);
            }
            Frame::Join {
                topic,
                language,
                pow_solution,
            } => {
                w.u16(topic.map_or(0, |t| t.0));
                w.language(*language);
                w.bytes(pow_solution);
            }
            Frame::Unavailable { reason, next_open } => {
                w.u8(reason.to_byte());
                w.u64(next_open.unwrap_or(0));
            }
            Frame::Status {
                available,
                capacity,
                topics,
                languages,
            } => {
                w.u8(u8::from(*available));
                w.u8(*capacity);
                let n = topics.len().min(MAX_TOPICS);
                w.u8(n as u8);
                for t in &topics[..n] {
                    w.u16(t.0);
                }
                w.zeros(2 * (MAX_TOPICS - n));
                w.u8(languages.len().min(MAX_LANGUAGES) as u8);
                w.languages(languages);
            }
            Frame::QueueStats { waiting } => {
                let n = waiting.len().min(MAX_TOPICS + 1);
                w.u8(n as u8);
                for (topic, count) in &waiting[..n] {
                    w.u16(topic.map_or(0, |t| t.0));
                    w.u16(*count);
                }
                w.zeros(4 * (MAX_TOPICS + 1 - n));
            }
            Frame::Transfer { chat, target } => {
                w.u32(chat.0);
                match target {
                    TransferTarget::Colleague(name) => {
                        w.u8(0x01);
                        w.label(name);
                    }
                    TransferTarget::Queue => {
                        w.u8(0x02);
                        w.zeros(LABEL_SLOT);
                    }
                }
            }
            Frame::TransferRefused { chat, reason } => {
                w.u32(chat.0);
                w.u8(reason.to_byte());
            }
            Frame::Resume { capability } | Frame::Joined { resume: capability } => {
                w.bytes(&capability.0)
            }
            Frame::Resumed { chat } | Frame::PeerAway { chat } | Frame::PeerBack { chat } => {
                w.u32(chat.0)
            }
            // One reason for every failure, so a probe learns nothing.
            Frame::ResumeFailed => w.u8(0),
            Frame::Colleague { name, presence } => {
                w.u8(presence.to_byte());
                w.label(name);
            }
            Frame::Challenge { pow } => {
                w.u8(pow.difficulty);
                w.bytes(&pow.nonce);
            }
            Frame::Proof { solution } => w.bytes(solution),
            Frame::FormAsk => w.u8(0),
            Frame::FormField {
                form,
                fields,
                index,
                field,
            } => {
                w.bytes(&form.0);
                w.u8(*fields);
                w.u8(*index);
                match field {
                    Some(field) => {
                        w.label(&field.name);
                        let n = field.values.len().min(MAX_FIELD_VALUES);
                        w.u8(n as u8);
                        for value in &field.values[..n] {
                            w.label(value);
                        }
                        w.zeros(LABEL_SLOT * (MAX_FIELD_VALUES - n));
                    }
                    None => w.zeros(LABEL_SLOT + 1 + MAX_FIELD_VALUES * LABEL_SLOT),
                }
            }
            Frame::Codings {
                batch,
                form,
                codings,
            } => {
                w.bytes(&batch.0);
                w.bytes(&form.0);
                let n = codings.len().min(MAX_CODINGS);
                w.u8(n as u8);
                for coding in &codings[..n] {
                    w.u16(coding.month.year());
                    w.u8(coding.month.month());
                    w.bytes(&coding.values);
                }
                w.zeros(CODING_LEN * (MAX_CODINGS - n));
            }
            Frame::CodingsResult { batch, outcome } => {
                w.bytes(&batch.0);
                w.u8(outcome.to_byte());
            }
        }
        debug_assert_eq!(out.len() - start, self.encoded_len());
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out
    }

    /// Decodes exactly one frame from `bytes`; trailing bytes are an error.
    pub fn decode(bytes: &[u8]) -> Result<Frame, FrameError> {
        let mut decoder = FrameDecoder::default();
        let mut frames = Vec::new();
        let used = decoder.push(bytes, &mut frames)?;
        match (frames.len(), decoder.is_idle(), used == bytes.len()) {
            (1, true, true) => Ok(frames.remove(0)),
            _ => Err(FrameError::BadField("frame boundary")),
        }
    }

    pub(super) fn decode_body(kind: u8, body: &[u8]) -> Result<Frame, FrameError> {
        let mut r = Reader(body);
        let frame = match kind {
            kind::HELLO => Frame::Hello {
                version: r.u8()?,
                role: Role::from_byte(r.u8()?)?,
            },
            kind::WELCOME => {
                let version = r.u8()?;
                let role = Role::from_byte(r.u8()?)?;
                let topics = r.u8()?;
                if topics as usize > MAX_TOPICS {
                    return Err(FrameError::BadField("topic count"));
                }
                let count = r.u8()? as usize;
                let languages = r.languages(count)?;
                Frame::Welcome {
                    version,
                    role,
                    topics,
                    languages,
                    pow: r.pow()?,
                }
            }
            kind::QUEUED => {
                let position = r.u32()?;
                if position == 0 {
                    return Err(FrameError::BadField("position"));
                }
                let wait = r.u32()?;
                Frame::Queued {
                    position,
                    estimated_wait_secs: (wait != u32::MAX).then_some(wait),
                }
            }
            kind::PAIRED => {
                let chat = r.chat()?;
                let mut id = [0u8; 16];
                id.copy_from_slice(r.take(16)?);
                let mut resume = [0u8; 32];
                resume.copy_from_slice(r.take(32)?);
                Frame::Paired {
                    chat,
                    pairing_id: PairingId(id),
                    resume: ResumeCapability(resume),
                    topic: r.topic()?,
                    language: r.optional_language()?,
                }
            }
            kind::FORWARD => Frame::Forward {
                chat: r.chat()?,
                blob: Blob::from_slice(r.take(BLOB_LEN)?).ok_or(FrameError::BadField("blob"))?,
            },
            kind::END => Frame::End {
                chat: r.chat()?,
                reason: EndReason::from_byte(r.u8()?)?,
            },
            kind::TOPIC => Frame::Topic {
                id: r.topic()?.ok_or(FrameError::BadField("topic"))?,
                label_nl: r.label("label_nl")?,
                label_en: r.label("label_en")?,
            },
            kind::JOIN => {
                let topic = r.topic()?;
                let language = r.optional_language()?;
                let mut pow_solution = [0u8; 8];
                pow_solution.copy_from_slice(r.take(8)?);
                Frame::Join {
                    topic,
                    language,
                    pow_solution,
                }
            }
            kind::UNAVAILABLE => {
                let reason = Unavailable::from_byte(r.u8()?)?;
                let next = r.u64()?;
                Frame::Unavailable {
                    reason,
                    next_open: (next != 0).then_some(next),
                }
            }
            kind::STATUS => {
                let available = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(FrameError::BadField("available")),
                };
                let capacity = r.u8()?;
                let n = r.u8()? as usize;
                if n > MAX_TOPICS {
                    return Err(FrameError::BadField("topic count"));
                }
                let topics = (0..n)
                    .map(|_| r.topic()?.ok_or(FrameError::BadField("topic")))
                    .collect::<Result<_, _>>()?;
                r.zeros(2 * (MAX_TOPICS - n), "topics")?;
                let count = r.u8()? as usize;
                Frame::Status {
                    available,
                    capacity,
                    topics,
                    languages: r.languages(count)?,
                }
            }
            kind::QUEUE_STATS => {
                let n = r.u8()? as usize;
                if n > MAX_TOPICS + 1 {
                    return Err(FrameError::BadField("entry count"));
                }
                let waiting = (0..n)
                    .map(|_| Ok((r.topic()?, r.u16()?)))
                    .collect::<Result<_, FrameError>>()?;
                r.zeros(4 * (MAX_TOPICS + 1 - n), "entries")?;
                Frame::QueueStats { waiting }
            }
            kind::TRANSFER => {
                let chat = r.chat()?;
                let target = match r.u8()? {
                    0x01 => TransferTarget::Colleague(r.label("colleague")?),
                    0x02 => {
                        r.zeros(LABEL_SLOT, "colleague")?;
                        TransferTarget::Queue
                    }
                    _ => return Err(FrameError::BadField("target")),
                };
                Frame::Transfer { chat, target }
            }
            kind::TRANSFER_REFUSED => Frame::TransferRefused {
                chat: r.chat()?,
                reason: Refusal::from_byte(r.u8()?)?,
            },
            kind::RESUME => {
                let mut capability = [0u8; 32];
                capability.copy_from_slice(r.take(32)?);
                Frame::Resume {
                    capability: ResumeCapability(capability),
                }
            }
            kind::JOINED => {
                let mut resume = [0u8; 32];
                resume.copy_from_slice(r.take(32)?);
                Frame::Joined {
                    resume: ResumeCapability(resume),
                }
            }
            kind::RESUMED => Frame::Resumed { chat: r.chat()? },
            kind::PEER_AWAY => Frame::PeerAway { chat: r.chat()? },
            kind::PEER_BACK => Frame::PeerBack { chat: r.chat()? },
            kind::RESUME_FAILED => match r.u8()? {
                0 => Frame::ResumeFailed,
                _ => return Err(FrameError::BadField("reason")),
            },
            kind::COLLEAGUE => Frame::Colleague {
                presence: Presence::from_byte(r.u8()?)?,
                name: r.label("name")?,
            },
            kind::CHALLENGE => Frame::Challenge { pow: r.pow()? },
            kind::PROOF => {
                let mut solution = [0u8; 8];
                solution.copy_from_slice(r.take(8)?);
                Frame::Proof { solution }
            }
            kind::FORM_ASK => match r.u8()? {
                0 => Frame::FormAsk,
                _ => return Err(FrameError::BadField("reserved")),
            },
            kind::FORM_FIELD => {
                let form = FormId(r.array()?);
                let fields = r.u8()?;
                let index = r.u8()?;
                if usize::from(fields) > MAX_FORM_FIELDS {
                    return Err(FrameError::BadField("fields"));
                }
                let field = if fields == 0 {
                    // A relay that collects nothing: every other byte zero.
                    if form != FormId::default() || index != 0 {
                        return Err(FrameError::BadField("form"));
                    }
                    r.zeros(LABEL_SLOT + 1 + MAX_FIELD_VALUES * LABEL_SLOT, "field")?;
                    None
                } else {
                    if index >= fields {
                        return Err(FrameError::BadField("index"));
                    }
                    let name = r.label("name")?;
                    let n = usize::from(r.u8()?);
                    if n == 0 || n > MAX_FIELD_VALUES {
                        return Err(FrameError::BadField("value count"));
                    }
                    let values = (0..n).map(|_| r.label("value")).collect::<Result<_, _>>()?;
                    r.zeros(LABEL_SLOT * (MAX_FIELD_VALUES - n), "values")?;
                    Some(CodingField { name, values })
                };
                Frame::FormField {
                    form,
                    fields,
                    index,
                    field,
                }
            }
            kind::CODINGS => {
                let batch = BatchId(r.array()?);
                let form = FormId(r.array()?);
                let n = usize::from(r.u8()?);
                if n == 0 || n > MAX_CODINGS {
                    return Err(FrameError::BadField("coding count"));
                }
                let codings = (0..n)
                    .map(|_| {
                        let year = r.u16()?;
                        let month =
                            Month::new(year, r.u8()?).ok_or(FrameError::BadField("month"))?;
                        Ok(Coding {
                            month,
                            values: r.array()?,
                        })
                    })
                    .collect::<Result<_, FrameError>>()?;
                r.zeros(CODING_LEN * (MAX_CODINGS - n), "codings")?;
                Frame::Codings {
                    batch,
                    form,
                    codings,
                }
            }
            kind::CODINGS_RESULT => Frame::CodingsResult {
                batch: BatchId(r.array()?),
                outcome: CodingsOutcome::from_byte(r.u8()?)?,
            },
            other => return Err(FrameError::UnknownType(other)),
        };
        // Every byte of the body belongs to a field; a parser that left
        // some unread would accept a frame the spec does not have.
        r.finish()?;
        Ok(frame)
    }
}
