// Test support: which failed exchanges the pool is to blame for. Used by every test whose server
// closes, resets or sends stray bytes on connections while clients use them (the concurrency test,
// the soak).
//
// A failed exchange on a reused connection is a DEAD HAND-OUT only if the server poisoned the
// connection (closed, reset or sent stray bytes on it: test::poison) before the acquire began AND the
// client's own non-blocking peek when the pool handed it out already saw it: the pool handed out a
// connection whose death had reached this end. Poisoned before the acquire but not yet visible at the
// hand-out is a LATE DELIVERY: on a loaded machine the kernel may deliver a loopback segment well
// after the sender's syscall returned (softirq work deferred to ksoftirqd), and Nagle's algorithm
// holds small stray bytes in the server's send queue until the client acknowledges the answer sent
// before them (the echo server does not set TCP_NODELAY); it is counted and reported, not failed.
// Poisoned after the acquire began, never, or a fresh connection: RACED, a failure no pool could
// have prevented.
#ifndef CONNPOOL_TESTS_SERVERS_OUTCOME_HPP
#define CONNPOOL_TESTS_SERVERS_OUTCOME_HPP

#include <sys/socket.h>

#include <cerrno>
#include <chrono>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "echo_server.hpp"

namespace test {

/// The client's own look at a connection: true when nothing has reached it (no bytes, no end of
/// stream, no reset): recv(MSG_PEEK | MSG_DONTWAIT) says EAGAIN.
inline bool healthy_now(int fd) {
  char c;
  return ::recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

/// What a client notes about a connection the moment the pool hands it out.
struct handout {
  std::chrono::steady_clock::time_point acquire_start;  // taken before the acquire call
  unsigned short port = 0;                              // the client's; the server's record is by it
  bool reused = false;
  bool healthy = true;  // healthy_now() at the hand-out
};

/// Take the note, the peek included, right after the acquire returned `l`.
template <class Lease>
handout note_handout(Lease& l, std::chrono::steady_clock::time_point acquire_start) {
  handout h;
  h.acquire_start = acquire_start;
  h.port = l.socket().local_endpoint().port();
  h.reused = l.reused();
  h.healthy = healthy_now(l.socket().native_handle());
  return h;
}

enum class failed_exchange { raced, late_delivery, dead_handout };

/// Classify a failed exchange on the connection noted in `h`, given what the server did to it.
inline failed_exchange classify(const handout& h, const std::optional<poison>& p) {
  if (!h.reused || !p || p->at >= h.acquire_start) return failed_exchange::raced;
  return h.healthy ? failed_exchange::late_delivery : failed_exchange::dead_handout;
}

/// Failed exchanges by kind, shared by client threads, with a line for each dead hand-out.
class failure_tally {
 public:
  /// Classify a failed exchange against `server`'s record, and count it.
  template <class Server>
  failed_exchange add(Server& server, const handout& h) {
    const std::optional<poison> p = server.poisoned_at(h.port);
    const failed_exchange kind = classify(h, p);
    std::lock_guard<std::mutex> lk(mu_);
    ++counts_[static_cast<std::size_t>(kind)];
    if (kind == failed_exchange::dead_handout)
      notes_.push_back("dead hand-out: " + p->what + " " +
                       std::to_string(std::chrono::duration_cast<std::chrono::microseconds>(h.acquire_start - p->at)
                                          .count()) +
                       " us before the acquire began");
    return kind;
  }

  std::size_t count(failed_exchange kind) const {
    std::lock_guard<std::mutex> lk(mu_);
    return counts_[static_cast<std::size_t>(kind)];
  }
  std::size_t raced() const { return count(failed_exchange::raced); }
  std::size_t late_deliveries() const { return count(failed_exchange::late_delivery); }
  std::size_t dead_handouts() const { return count(failed_exchange::dead_handout); }
  std::vector<std::string> notes() const {
    std::lock_guard<std::mutex> lk(mu_);
    return notes_;
  }

 private:
  mutable std::mutex mu_;
  std::size_t counts_[3] = {};  // by failed_exchange
  std::vector<std::string> notes_;
};

}  // namespace test

#endif
