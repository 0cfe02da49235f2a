//! A WebSocket session's life: opening it (subscribe to every room of the
//! user, `hello`, announce the user if this is their first connection
//! anywhere) and ending it (leave every room, announce them offline if it
//! was their last).

use super::Ctx;
use crate::{
    auth::Claims,
    conn::{Bucket, Framing, Session, Tick, TokenClaims},
    durable::AfterFlush,
    fanout::ConnId,
    local::Fresh,
    wire::{self, http, Encoding, Presence, Refusal, RoomState, ServerFrame},
};
use bytes::Bytes;
use std::sync::Arc;
use tungstenite::protocol::WebSocketConfig;

/// An accepted upgrade request.
#[derive(Debug)]
pub(crate) struct Upgrade {
    /// The 101 response.
    pub response: Bytes,
    /// Who it is.
    pub claims: Claims,
    /// The encoding chosen.
    pub enc: Encoding,
    /// Bytes read past the request head (the first frames).
    pub leftover: Vec<u8>,
    /// The last `X-Forwarded-For` address, used as the client's address
    /// when the peer is a trusted proxy.
    pub forwarded: Option<std::net::IpAddr>,
}

/// Finishes the upgrade of connection `id`.
pub(crate) fn open(ctx: &mut Ctx<'_>, id: ConnId, up: Upgrade, ws_config: &WebSocketConfig) {
    let node = ctx.node;
    let claims = &up.claims;
    if let Err(e) = first_sight(ctx, &claims.sub, claims.name.as_deref()) {
        return ctx.respond(id, http::error(503, "unavailable", &e.message));
    }
    let gen = node.storage().membership_gen();
    let rooms = match node.storage().rooms_of(&claims.sub) {
        Ok(r) => r,
        Err(e) => return ctx.respond(id, http::error(503, "unavailable", &e.to_string())),
    };
    let user = ctx.local.user_name(&claims.sub);
    let Some(conn) = ctx.conns.get_mut(id) else { return };
    let peer = conn.peer_ip();
    let trusted = peer.is_some_and(|p| node.cfg().trusted_proxies.contains(&p));
    let ip = if trusted { up.forwarded.or(peer) } else { peer };
    if let Err(why) = node.admit(ip, &user) {
        return ctx.respond(id, http::error(429, "too_many_connections", why));
    }
    let Some(conn) = ctx.conns.get_mut(id) else { return };
    let ws = Framing::new(up.leftover, ws_config);
    let c = &up.claims;
    let (token, iat) =
        (TokenClaims::boxed(c.name.as_deref(), c.jti.as_deref()), Session::iat_of(c.iat));
    conn.open(
        up.response,
        Session {
            ws,
            user: user.clone(),
            token,
            iat,
            admin: up.claims.admin,
            exp: up.claims.exp,
            ip,
            enc: up.enc,
            rooms: Vec::with_capacity(rooms.len()),
            bucket: Bucket::new(node.cfg().burst, ctx.now),
            pinged: Tick::at(ctx.now),
            // Never the current generation: the first sweep checks the
            // token again, so a revocation made after the upgrade's check
            // (on another thread) is not missed.
            revocation_gen: u32::MAX,
        },
    );
    let first = ctx.local.add_session(node, &user, id);
    node.count_connection(id.reactor, true, ctx.local.sessions());
    // Read again now that the directory knows this connection if any
    // membership changed since the first read: one another node's event
    // stored in between would otherwise be missed (its subscribe went to
    // the user's reactors before this one was among them). That event
    // moves the generation before it looks for the user's connections, so
    // if it missed this one, this read sees the move. (The second read of
    // 1,000 rooms was a fifth of `hello`'s sled reads.)
    let unchanged = node.storage().membership_gen() == gen;
    let rooms = if unchanged { rooms } else { node.storage().rooms_of(&user).unwrap_or(rooms) };
    // Cluster-wide, this is only news if no other node has them. Told as
    // this connection subscribes, room by room (one directory visit each).
    let online = first && !node.peers().presence(&user, true);
    hello(ctx, id, &user, up.claims.name.as_deref(), &rooms, online);
}

/// Records the user's display name (telling the other nodes when it
/// changed) and, on their first connection ever, makes them a member of
/// the `default_rooms`.
pub(crate) fn first_sight(ctx: &Ctx<'_>, user: &str, name: Option<&str>) -> Result<(), Refusal> {
    let node = ctx.node;
    let (first, changed) = node.storage().saw_user(user, name)?;
    if changed || first {
        node.peers().name(user, name);
    }
    if !first {
        return Ok(());
    }
    let mut joined = false;
    for room in &node.cfg().default_rooms {
        if node.storage().add_member(room, user)? {
            let seq = node.visible_seq(room)?;
            node.presence(room, &Arc::from(user), Presence::Online);
            node.peers().member(room, user, Some(seq));
            joined = true;
        }
    }
    if joined {
        // Durable with the next group commit, like a read marker.
        node.after_flush(AfterFlush::nothing());
    }
    Ok(())
}

/// Subscribes connection `id` to every room of the user and sends `hello`.
/// With `online`, each room is told the user came online.
fn hello(
    ctx: &mut Ctx<'_>,
    id: ConnId,
    user: &Arc<str>,
    name: Option<&str>,
    rooms: &[String],
    online: bool,
) {
    let fresh = Fresh::Opening(online.then_some(user));
    let node = ctx.node;
    let mut states = Vec::with_capacity(rooms.len());
    // Both lists are in the order of room names: walked together.
    let reads = node.storage().read_markers(user).unwrap_or_default();
    let counts = node.storage().unread_of(user);
    let mut reads = reads.iter().peekable();
    for room in rooms {
        let seq = match ctx.local.subscribe(node, ctx.conns, id, room, None, fresh) {
            Ok((_, seq)) => seq,
            Err(_) => 0,
        };
        let read = loop {
            match reads.peek() {
                Some((r, _)) if r.as_str() < room.as_str() => drop(reads.next()),
                Some((r, seq)) if r == room => break *seq,
                _ => break 0,
            }
        };
        // Nothing above the marker: no need to read the room's indexes.
        let (unread, mentions) =
            if read >= seq { (0, 0) } else { counts.room(room, read, seq).unwrap_or((0, 0)) };
        states.push(RoomState { room, seq, read, unread, mentions });
    }
    let hello = ServerFrame::Hello {
        user,
        name,
        node: &node.cfg().node_id,
        server_time: wire::now_ms(),
        rooms: states,
        limits: node.limits(),
    };
    ctx.frame(id, &hello);
}

/// Ends a session taken out of connection `id`.
pub(crate) fn close(ctx: &mut Ctx<'_>, id: ConnId, mut session: Session) {
    let node = ctx.node;
    node.release_ip(session.ip);
    let user = session.user.clone();
    // Cluster-wide, this is only news if no other node has them.
    let offline = |last| last && !node.peers().presence(&user, false);
    ctx.local.remove_session(node, &mut session, id, offline);
    node.count_connection(id.reactor, false, ctx.local.sessions());
}
