//! `refresh`: a new token for the same user, name and admin flag, with the
//! current token's lifetime; the connection then lives until its expiry.

use super::Ctx;
use crate::{
    auth::Claims,
    conn::{Session, TokenClaims},
    fanout::ReplyTo,
    wire::{self, Code, Refusal, ServerFrame},
};

/// The lifetime of a token without `iat`.
const DEFAULT_LIFETIME_S: u64 = 30 * 86_400;

/// Answers `to` with a fresh token and moves the session onto it.
pub(crate) fn refresh(ctx: &mut Ctx<'_>, to: &ReplyTo) -> Result<(), Refusal> {
    let conn = to.conn();
    let keys = ctx.node.keys();
    let Some(session) = ctx.conns.session_mut(conn) else { return Ok(()) };
    let now = wire::now_ms() / 1000;
    let lifetime = match (u64::from(session.iat), session.exp) {
        (iat, exp) if iat > 0 && exp > iat && exp != u64::MAX => exp - iat,
        _ => DEFAULT_LIFETIME_S,
    };
    let claims = Claims {
        sub: session.user.to_string(),
        exp: now + lifetime,
        name: session.token.as_ref().and_then(|t| t.name.as_deref()).map(str::to_string),
        admin: session.admin,
        jti: Some(hex::encode(rand::random::<[u8; 16]>())),
        iat: Some(now),
    };
    let token = keys.sign(&claims).map_err(|_| Refusal::new(Code::Internal, "cannot sign"))?;
    session.exp = claims.exp;
    session.token = TokenClaims::boxed(claims.name.as_deref(), claims.jti.as_deref());
    session.iat = Session::iat_of(claims.iat);
    let frame = ServerFrame::Token { id: to.id(), token: &token, exp: claims.exp };
    ctx.frame(conn, &frame);
    Ok(())
}
