//! Requests that need no ordering with a chat's writes: creating a chat, listing chats,
//! reading history, announcing presence. Each runs as its own task.

use persistence::{Created, NewChat, Page, StoreError};
use protocol::envelope::{BusEvent, RouterOp, RouterReply, chat_subject, user_subject};
use protocol::limits::MAX_CHAT_ID;
use protocol::{ChatId, ChatKind, ChatSummary, ErrorCode, UserId};
use rules::history::trim_page;

use crate::answer::{publish, refused, send_reply, store_error};
use crate::dispatch::{Job, Services};

/// Attempts at drawing a free random chat id.
const CREATE_ATTEMPTS: usize = 4;

/// Serves one unsequenced request and answers it.
pub(crate) async fn serve(services: Services, job: Job, max_presence: usize) {
    let Job { request, reply: reply_to, .. } = job;
    let user = request.user;
    let reply = match request.op {
        RouterOp::CreateChat { kind, title, members } => create_chat(&services, &user, kind, &title, &members).await,
        RouterOp::ListChats => match services.store.user_chats(&user).await {
            Ok(chats) => RouterReply::Chats(chats),
            Err(e) => store_error(e),
        },
        RouterOp::ChatIds => match services.store.chat_ids(&user).await {
            Ok(ids) => RouterReply::ChatIds(ids),
            Err(e) => store_error(e),
        },
        RouterOp::History { chat, before, after, limit } => history(&services, &user, chat, before, after, limit).await,
        RouterOp::Presence { status } => match services.store.user_chats(&user).await {
            // Presence goes to direct chats and groups, never to broadcast channels: a
            // channel's subscribers do not see each other, and announcing each of a million
            // subscribers to all the others would cost a trillion deliveries.
            Ok(chats) => {
                let shared = chats.into_iter().filter(|c| c.kind != ChatKind::Broadcast).take(max_presence);
                for chat in shared.map(|c| c.chat) {
                    let event = BusEvent::Presence { chat, user: user.clone(), status };
                    publish(&*services.bus, &chat_subject(chat), &event).await;
                }
                RouterReply::Ok
            }
            Err(e) => store_error(e),
        },
        RouterOp::Revocations { after } => {
            let now = services.clock.now_ms() / 1000;
            match crate::revocation::page(&services.store, after, now).await {
                Ok((entries, more)) => RouterReply::Revocations { entries, more },
                Err(e) => store_error(e),
            }
        }
        // Sequenced ops never reach here.
        _ => RouterReply::error(ErrorCode::UnknownOp, "misrouted request"),
    };
    if let Some(subject) = reply_to {
        send_reply(&*services.bus, &subject, reply).await;
    }
}

async fn create_chat(services: &Services, user: &str, kind: ChatKind, title: &str, members: &[UserId]) -> RouterReply {
    let ts = services.clock.now_ms();
    // A random id in 1..2^53; the store reports the (astronomically rare) collision, and we
    // draw again.
    for _ in 0..CREATE_ATTEMPTS {
        let id = (rand::random::<u64>() & MAX_CHAT_ID).max(1);
        let new = match NewChat::plan(id, ts, kind, title, user, members) {
            Ok(new) => new,
            Err(why) => return RouterReply::error(ErrorCode::Invalid, why),
        };
        let members: Vec<UserId> = new.members.iter().map(|(u, _)| u.clone()).collect();
        let audited = |outcome, chat| audit::Event::ChatCreated {
            actor: user,
            outcome,
            chat,
            kind: kind_name(kind),
            members: &members,
        };
        if let Err(err) = services.audit.record(&audited(audit::Outcome::Requested, id)) {
            tracing::error!(error = %err, "refusing a chat creation that could not be audited");
            return RouterReply::error(ErrorCode::Unavailable, "audit unavailable; retry");
        }
        match services.store.create_chat(new.clone()).await {
            Ok(Created::New { chat, event }) => {
                services.audit.note(&audited(audit::Outcome::Committed, chat));
                for (member, _) in &new.members {
                    let joined = BusEvent::Joined { chat, user: member.clone(), event: event.clone() };
                    publish(&*services.bus, &user_subject(member), &joined).await;
                }
                let role = NewChat::creator_role(kind);
                let summary = ChatSummary { chat, kind, title: new.title, role, last_seq: 1, read_seq: 0 };
                return RouterReply::ChatCreated { chat: summary, created: true };
            }
            Ok(Created::Existing { chat }) => {
                return match services.store.user_chats(user).await {
                    Ok(chats) => match chats.into_iter().find(|c| c.chat == chat) {
                        Some(summary) => RouterReply::ChatCreated { chat: summary, created: false },
                        None => RouterReply::error(ErrorCode::Unavailable, "direct chat vanished; retry"),
                    },
                    Err(e) => store_error(e),
                };
            }
            Err(StoreError::IdCollision) => continue,
            Err(e) => return store_error(e),
        }
    }
    store_error(StoreError::IdCollision)
}

fn kind_name(kind: ChatKind) -> &'static str {
    match kind {
        ChatKind::Direct => "direct",
        ChatKind::Group => "group",
        ChatKind::Broadcast => "broadcast",
    }
}

async fn history(
    services: &Services,
    user: &str,
    chat: ChatId,
    before: Option<u64>,
    after: Option<u64>,
    limit: u32,
) -> RouterReply {
    let store = &services.store;
    let record = match store.chat(chat).await {
        Ok(Some(record)) => record,
        Ok(None) => return RouterReply::error(ErrorCode::NotFound, "no such chat"),
        Err(e) => return store_error(e),
    };
    let role = match store.role(chat, user).await {
        Ok(role) => role,
        Err(e) => return store_error(e),
    };
    if let Err(r) = rules::request::may_read(role) {
        return refused(r);
    }
    let page = match Page::requested(before, after, limit) {
        Ok(page) => page,
        Err(why) => return RouterReply::error(ErrorCode::Invalid, why),
    };
    match store.history(chat, page).await {
        Ok(p) => {
            let (events, trimmed) = trim_page(p.events, page.newest_first());
            let last_seq = record.last_seq.max(events.last().map(|e| e.seq).unwrap_or(0));
            RouterReply::History { events, more: p.more || trimmed, last_seq }
        }
        Err(e) => store_error(e),
    }
}
