// What watching idle connections costs, measured on this machine: the numbers behind the design
// choice in docs/design.md ("Watching idle connections"). Plain POSIX sockets on loopback, no Asio.
//
//  1. Syscall prices on a healthy idle connection: the probe (recv MSG_PEEK|MSG_DONTWAIT), poll(0),
//     getsockopt(TCP_INFO), and the epoll_ctl MOD pair a watch would need to arm on release and
//     disarm on acquire.
//  2. Request/response on one connection while a watcher thread blocks in epoll_wait on a set that
//     holds the connection: registered for EPOLLRDHUP|EPOLLET only (what connpool does), for
//     EPOLLIN|EPOLLRDHUP|EPOLLET (what noticing stray bytes without re-arming would need), or not
//     at all. Reports watcher wake-ups per request, process CPU time (client, echo thread and watcher)
//     per request and requests/s, interleaved in rounds.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "bench_util.hpp"

namespace {

using bench::clock_type;

[[noreturn]] void die(const char* what) {
  std::perror(what);
  std::exit(1);
}

// A connected loopback pair: {client, server}.
void connected_pair(int& client, int& server) {
  int l = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (l < 0 || ::bind(l, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(l, 1) != 0 ||
      ::getsockname(l, reinterpret_cast<sockaddr*>(&a), &len) != 0)
    die("listen");
  client = ::socket(AF_INET, SOCK_STREAM, 0);
  if (client < 0 || ::connect(client, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) die("connect");
  server = ::accept(l, nullptr, nullptr);
  if (server < 0) die("accept");
  ::close(l);
  int one = 1;
  ::setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  ::setsockopt(server, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

template <class F>
double ns_per_call(int n, F f) {
  const auto t0 = clock_type::now();
  for (int i = 0; i < n; ++i) f();
  return bench::ns(clock_type::now() - t0) / n;
}

enum watch_kind { no_watch, rdhup_only, in_and_rdhup, kinds };
const char* const kind_names[] = {"no watch", "EPOLLRDHUP|EPOLLET (connpool)", "EPOLLIN|EPOLLRDHUP|EPOLLET"};

}  // namespace

int main(int argc, char** argv) {
  const int calls = argc > 1 ? std::atoi(argv[1]) : 200000;
  const int requests = argc > 2 ? std::atoi(argv[2]) : 20000;
  const int rounds = 4;
  int c, s;
  connected_pair(c, s);

  // 1. Syscall prices.
  int ep = ::epoll_create1(EPOLL_CLOEXEC);
  epoll_event ev{};
  ev.events = EPOLLRDHUP | EPOLLET;
  if (::epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev) != 0) die("epoll_ctl");
  double peek = 0, pollz = 0, info = 0, modpair = 0;
  for (int r = 0; r < rounds; ++r) {
    peek += ns_per_call(calls / rounds, [&] {
      char b;
      if (::recv(c, &b, 1, MSG_PEEK | MSG_DONTWAIT) != -1) die("probe");
    });
    pollz += ns_per_call(calls / rounds, [&] {
      pollfd p{c, POLLIN, 0};
      ::poll(&p, 1, 0);
    });
    info += ns_per_call(calls / rounds, [&] {
      tcp_info ti{};
      socklen_t len = sizeof ti;
      ::getsockopt(c, IPPROTO_TCP, TCP_INFO, &ti, &len);
    });
    modpair += ns_per_call(calls / rounds, [&] {
      epoll_event on{}, off{};
      on.events = EPOLLIN | EPOLLRDHUP | EPOLLET;
      off.events = EPOLLRDHUP | EPOLLET;
      ::epoll_ctl(ep, EPOLL_CTL_MOD, c, &on);
      ::epoll_ctl(ep, EPOLL_CTL_MOD, c, &off);
    });
  }
  std::printf("syscall prices on an idle loopback connection (ns per call, %d calls each)\n", calls);
  std::printf("  probe recv(MSG_PEEK|MSG_DONTWAIT)   %8.0f\n", peek / rounds);
  std::printf("  poll(0)                             %8.0f\n", pollz / rounds);
  std::printf("  getsockopt(TCP_INFO)                %8.0f\n", info / rounds);
  std::printf("  epoll_ctl MOD arm + disarm (pair)   %8.0f\n\n", modpair / rounds);
  ::epoll_ctl(ep, EPOLL_CTL_DEL, c, nullptr);

  // 2. Request/response with a watcher blocked on the set.
  std::atomic<bool> stop{false};
  std::thread echo([&] {
    char buf[64];
    for (;;) {
      ssize_t n = ::recv(s, buf, sizeof buf, 0);
      if (n <= 0 || ::send(s, buf, static_cast<size_t>(n), MSG_NOSIGNAL) != n) return;
    }
  });
  std::atomic<long> wakeups{0};
  std::thread watcher([&] {
    epoll_event evs[8];
    while (!stop.load()) {
      if (::epoll_wait(ep, evs, 8, 100) > 0) ++wakeups;
    }
  });
  double secs[kinds] = {}, wakes[kinds] = {}, cpu[kinds] = {};
  char msg[64] = {}, back[64];
  for (int r = 0; r < rounds; ++r) {
    for (int k = 0; k < kinds; ++k) {
      if (k != no_watch) {
        epoll_event w{};
        w.events = EPOLLRDHUP | EPOLLET | (k == in_and_rdhup ? EPOLLIN : 0u);
        if (::epoll_ctl(ep, EPOLL_CTL_ADD, c, &w) != 0) die("epoll_ctl add");
      }
      const long w0 = wakeups.load();
      const bench::usage u0 = bench::usage::now();
      const auto t0 = clock_type::now();
      for (int i = 0; i < requests / rounds; ++i) {
        if (::send(c, msg, sizeof msg, 0) != sizeof msg) die("send");
        for (size_t got = 0; got < sizeof back;) {
          ssize_t n = ::recv(c, back + got, sizeof back - got, 0);
          if (n <= 0) die("recv");
          got += static_cast<size_t>(n);
        }
      }
      secs[k] += bench::seconds(clock_type::now() - t0);
      wakes[k] += static_cast<double>(wakeups.load() - w0);
      cpu[k] += (bench::usage::now() - u0).cpu_ms() / 1e3;
      if (k != no_watch) ::epoll_ctl(ep, EPOLL_CTL_DEL, c, nullptr);
    }
  }
  stop = true;
  watcher.join();
  ::shutdown(c, SHUT_WR);
  echo.join();
  std::printf("%d 64 B request/responses, a watcher thread blocked in epoll_wait on the connection's set\n",
              requests);
  std::printf("  %-32s %10s %16s %12s %10s\n", "registration", "req/s", "wake-ups/request", "cpu us/req",
              "req/s vs none");
  for (int k = 0; k < kinds; ++k) {
    const double rps = requests / secs[k];
    std::printf("  %-32s %10.0f %16.2f %12.2f %9.2fx\n", kind_names[k], rps, wakes[k] / requests,
                cpu[k] * 1e6 / requests, rps / (requests / secs[no_watch]));
  }
  ::close(ep);
  ::close(c);
  ::close(s);
  return 0;
}
