// server.cpp: a minimal µWebSockets chat server, the peer chinwag is
// compared with per delivery under `chinwag-load --proto json`.
//
// Owns: just enough of chinwag's JSON dialect (PROTOCOL.md sections 2-3) for
// the harness's `fanout`, `sweep` and `idle` scenarios, and nothing else:
// the upgrade at /ws?user=NAME with the `chinwag.v1.json` subprotocol, a
// `hello` with no rooms, `join` answered by `joined` with the room's seq,
// `send` numbered with a per-room seq in memory, published once to the
// room's topic as a `message` (the sender too, as chinwag does) and acked.
// It stores nothing, checks no membership and has no limits: it is the
// floor a chat server's fan-out can reach, as issue 12 quotes it.
//
// Frames from the harness carry no escapes (room names are [a-z0-9_.-],
// texts are `t=DIGITS;` and filler), so the fields are found by scanning,
// not by a JSON parser. Listens on 127.0.0.1:PORT (PORT env, 0: any free
// port) and prints `listening on http://ADDR` on stderr, as chinwag does.
#include "App.h"

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <unordered_map>

namespace {

struct Session {
    std::string user;
};

// The string value of "KEY":" in FRAME, or empty.
std::string_view str_field(std::string_view frame, std::string_view key) {
    std::string pat = "\"" + std::string(key) + "\":\"";
    size_t at = frame.find(pat);
    if (at == std::string_view::npos) return {};
    at += pat.size();
    size_t end = frame.find('"', at);
    if (end == std::string_view::npos) return {};
    return frame.substr(at, end - at);
}

// The unsigned number after "KEY": in FRAME, or 0.
uint64_t num_field(std::string_view frame, std::string_view key) {
    std::string pat = "\"" + std::string(key) + "\":";
    size_t at = frame.find(pat);
    if (at == std::string_view::npos) return 0;
    uint64_t n = 0;
    for (at += pat.size(); at < frame.size() && frame[at] >= '0' && frame[at] <= '9'; at++) {
        n = n * 10 + uint64_t(frame[at] - '0');
    }
    return n;
}

uint64_t now_ms() {
    using namespace std::chrono;
    return uint64_t(duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count());
}

}  // namespace

int main() {
    std::unordered_map<std::string, uint64_t> seqs;
    int port = std::getenv("PORT") ? std::atoi(std::getenv("PORT")) : 0;
    uWS::App app;
    // One buffer for every frame built: single-threaded, like the loop.
    std::string out;
    out.reserve(8192);

    app.ws<Session>("/*", {
        .compression = uWS::DISABLED,
        .maxPayloadLength = 64 * 1024,
        .idleTimeout = 120,
        .maxBackpressure = 16 * 1024 * 1024,
        .closeOnBackpressureLimit = false,
        .resetIdleTimeoutOnSend = false,
        .sendPingsAutomatically = true,
        .upgrade = [](auto *res, auto *req, auto *context) {
            std::string user(req->getQuery("user"));
            if (user.empty()) user = "anon";
            res->template upgrade<Session>({.user = std::move(user)},
                req->getHeader("sec-websocket-key"),
                req->getHeader("sec-websocket-protocol"),
                req->getHeader("sec-websocket-extensions"), context);
        },
        .open = [&out](auto *ws) {
            Session *s = ws->getUserData();
            out.assign("{\"type\":\"hello\",\"user\":\"");
            out.append(s->user);
            out.append("\",\"rooms\":[],\"limits\":{\"max_text\":4000}}");
            ws->send(out, uWS::OpCode::TEXT);
        },
        .message = [&app, &seqs, &out](auto *ws, std::string_view frame, uWS::OpCode) {
            std::string_view type = str_field(frame, "type");
            std::string_view room = str_field(frame, "room");
            if (room.empty()) return;
            if (type == "join") {
                std::string name(room);
                ws->subscribe(name);
                out.assign("{\"type\":\"joined\",\"room\":\"");
                out.append(name);
                out.append("\",\"seq\":");
                out.append(std::to_string(seqs[name]));
                out.append(",\"members\":[],\"history\":[],\"more\":false}");
                ws->send(out, uWS::OpCode::TEXT);
            } else if (type == "send") {
                std::string name(room);
                uint64_t seq = ++seqs[name];
                std::string ts = std::to_string(now_ms());
                std::string_view text = str_field(frame, "text");
                out.assign("{\"type\":\"message\",\"room\":\"");
                out.append(name);
                out.append("\",\"seq\":");
                out.append(std::to_string(seq));
                out.append(",\"ts\":");
                out.append(ts);
                out.append(",\"from\":\"");
                out.append(ws->getUserData()->user);
                out.append("\",\"text\":\"");
                out.append(text);
                out.append("\"}");
                // Encoded once, written to every subscriber, the sender too.
                app.publish(name, out, uWS::OpCode::TEXT);
                out.assign("{\"type\":\"ack\",\"id\":");
                out.append(std::to_string(num_field(frame, "id")));
                out.append(",\"room\":\"");
                out.append(name);
                out.append("\",\"seq\":");
                out.append(std::to_string(seq));
                out.append(",\"ts\":");
                out.append(ts);
                out.append("}");
                ws->send(out, uWS::OpCode::TEXT);
            }
        },
    }).listen("127.0.0.1", port, [](auto *listen) {
        if (!listen) {
            std::fprintf(stderr, "cannot listen\n");
            std::exit(1);
        }
        std::fprintf(stderr, "listening on http://127.0.0.1:%d\n",
                     us_socket_local_port(0, (struct us_socket_t *) listen));
    }).run();
}
