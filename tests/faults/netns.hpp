// A network namespace of the test's own, entered by the calling thread only, for faults loopback
// cannot show (dropped SYNs, a blackholed peer, a tiny ephemeral port range). Sockets opened by this
// thread while it is inside stay in the namespace; the namespace and its nftables rules vanish when
// the last of them is closed. Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN) and, for rules, `nft`.
#ifndef CONNPOOL_TESTS_FAULTS_NETNS_HPP
#define CONNPOOL_TESTS_FAULTS_NETNS_HPP

#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

namespace test {

class scoped_netns {
 public:
  scoped_netns() {
    if (::geteuid() != 0) {
      why_ = "needs root (network namespace, nftables)";
      return;
    }
    home_ = ::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (home_ < 0 || ::unshare(CLONE_NEWNET) != 0) {
      why_ = std::string("cannot make a network namespace: ") + std::strerror(errno);
      return;
    }
    entered_ = true;
    const int s = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ifreq ifr{};
    std::strcpy(ifr.ifr_name, "lo");
    const bool up = s >= 0 && ::ioctl(s, SIOCGIFFLAGS, &ifr) == 0 && (ifr.ifr_flags |= IFF_UP, true) &&
                    ::ioctl(s, SIOCSIFFLAGS, &ifr) == 0;
    if (s >= 0) ::close(s);
    if (!up) why_ = std::string("cannot bring up lo in the namespace: ") + std::strerror(errno);
  }
  ~scoped_netns() {
    if (entered_) ::setns(home_, CLONE_NEWNET);
    if (home_ >= 0) ::close(home_);
  }
  scoped_netns(const scoped_netns&) = delete;
  scoped_netns& operator=(const scoped_netns&) = delete;

  /// Empty when the namespace is ready, else why not.
  const std::string& why_not() const { return why_; }

  /// Run `nft ARGS` inside the namespace (a child of this thread inherits it). With the table and
  /// input chain `inet t in` made on first use. Returns false if nft is missing or refused.
  bool nft(const std::string& args) {
    if (!table_) {
      if (!run("nft add table inet t") || !run("nft 'add chain inet t in { type filter hook input priority 0; }'"))
        return false;
      table_ = true;
    }
    return run("nft '" + args + "'");
  }

  /// Write a sysctl of this namespace, e.g. ("net/ipv4/ip_local_port_range", "40000 40009").
  bool sysctl(const std::string& key, const std::string& value) {
    std::ofstream f("/proc/sys/" + key);
    f << value;
    f.close();
    return static_cast<bool>(f);
  }

  static bool have_nft() { return run("nft --version"); }

 private:
  static bool run(const std::string& cmd) { return std::system((cmd + " >/dev/null 2>&1").c_str()) == 0; }

  int home_ = -1;
  bool entered_ = false;
  bool table_ = false;
  std::string why_;
};

}  // namespace test

#endif
