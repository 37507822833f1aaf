// One program with translation units built for both Asios: each must get its own connpool
// (distinct symbols through the ABI namespace), not one copy of inline functions whose
// definitions differ between the two builds.
#include <cstdio>
#include <string>

std::string standalone_mode();
std::string boost_mode();

int main() {
  const std::string want = "connpool|timed out waiting to acquire a connection|equal|invalid connection pool options";
  const std::string a = standalone_mode();
  const std::string b = boost_mode();
  std::printf("standalone: %s\nboost:      %s\n", a.c_str(), b.c_str());
  return a == want && b == want ? 0 : 1;
}
