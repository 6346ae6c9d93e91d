// Native eCAL 6.1.1 publisher / subscriber for the interop harness and the benchmark (this
// project's own program). It drives eCAL's C++ core (`libecal_core.so.6` from the
// eclipse-ecal==6.1.1 wheel) as eCAL's C++ users do, with the same command line and JSON summary
// as `ecal_peer.py` and the Rust examples:
//   ecal_native pub --topic T [--topic T2] --size N --count C --rate HZ [--wait-subscriber S] [--linger S]
//   ecal_native sub --topic T [--topic T2] --count C --timeout S [--verify mod251|none] [--idle S]
//   ecal_native scale --topics M --expect N [--duration S --settle S --window S]
//       (the scale test: M publishers and M subscribers on shared topics, no data; JSON events)
//   common: [--mode network|local] (checked against what eCAL loaded) [--no-digest]
// Digest: SHA-256 over the messages, each prefixed by its length as u64 little-endian.
//
// The eCAL declarations below are this project's own, written from eCAL's public headers of tag
// v6.1.1 read as documentation: only the few entry points used here, and the layouts of the
// structures this program reads or passes by reference. `cargo xtask` builds this file against
// the wheel's library; nothing of eCAL's is compiled in.

#include <dirent.h>
#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace eCAL {
// ecal/types.h
struct SDataTypeInformation {
  std::string name;
  std::string encoding;
  std::string descriptor;
};
// ecal/pubsub/types.h (only referenced here)
struct STopicId;
struct SReceiveCallbackData {
  const void* buffer = nullptr;
  size_t buffer_size = 0;
  int64_t send_timestamp = 0;  // µs
  int64_t send_clock = 0;
};
using ReceiveCallbackT =
    std::function<void(const STopicId&, const SDataTypeInformation&, const SReceiveCallbackData&)>;

// ecal/config/transport_layer.h
namespace TransportLayer {
enum class eType { none = 0, udp_mc = 1, shm = 4, tcp = 5 };
}
// ecal/config/publisher.h
namespace Publisher {
namespace Layer {
namespace SHM {
struct Configuration {
  bool enable;
  bool zero_copy_mode;
  unsigned int acknowledge_timeout_ms;
  unsigned int memfile_buffer_count;
  unsigned int memfile_min_size_bytes;
  unsigned int memfile_reserve_percent;
};
}  // namespace SHM
namespace UDP {
struct Configuration {
  bool enable;
};
}  // namespace UDP
namespace TCP {
struct Configuration {
  bool enable;
};
}  // namespace TCP
struct Configuration {
  SHM::Configuration shm;
  UDP::Configuration udp;
  TCP::Configuration tcp;
};
}  // namespace Layer
struct Configuration {
  Layer::Configuration layer;
  std::vector<TransportLayer::eType> layer_priority_local;
  std::vector<TransportLayer::eType> layer_priority_remote;
};
}  // namespace Publisher
// ecal/config/subscriber.h
namespace Subscriber {
namespace Layer {
struct Flag {
  bool enable;
};
struct Configuration {
  Flag shm;
  Flag udp;
  Flag tcp;
};
}  // namespace Layer
struct Configuration {
  Layer::Configuration layer;
  bool drop_out_of_order_messages;
};
}  // namespace Subscriber

// ecal/init.h
namespace Init {
constexpr unsigned int Publisher = 0x001, Subscriber = 0x002, Service = 0x004, Logging = 0x010,
                       TimeSync = 0x020;
constexpr unsigned int Default = Publisher | Subscriber | Service | Logging | TimeSync;
}  // namespace Init

// ecal/core.h, ecal/config.h
const std::string& GetVersionString();
bool Initialize(const std::string& unit_name, unsigned int components);
bool Finalize();
const Publisher::Configuration& GetPublisherConfiguration();
const Subscriber::Configuration& GetSubscriberConfiguration();
namespace Config {
const std::string& GetLoadedEcalIniPath();
bool IsNetworkEnabled();
bool IsUdpMulticastRecEnabled();
bool IsShmRecEnabled();
bool IsTcpRecEnabled();
}  // namespace Config

// ecal/pubsub/publisher.h: a vtable (virtual destructor) and one smart pointer.
class CPublisherImpl;
class CPublisher {
 public:
  CPublisher(const std::string& topic_name, const SDataTypeInformation& data_type_info,
             const Publisher::Configuration& config);
  virtual ~CPublisher();
  CPublisher(const CPublisher&) = delete;
  CPublisher& operator=(const CPublisher&) = delete;
  bool Send(const void* buf, size_t len, long long time);
  size_t GetSubscriberCount() const;

 private:
  std::shared_ptr<CPublisherImpl> m_publisher_impl;
};

// ecal/pubsub/subscriber.h
class CSubscriberImpl;
class CSubscriber {
 public:
  CSubscriber(const std::string& topic_name, const SDataTypeInformation& data_type_info,
              const Subscriber::Configuration& config);
  virtual ~CSubscriber();
  CSubscriber(const CSubscriber&) = delete;
  CSubscriber& operator=(const CSubscriber&) = delete;
  bool SetReceiveCallback(ReceiveCallbackT callback);
  bool RemoveReceiveCallback();
  size_t GetPublisherCount() const;

 private:
  std::shared_ptr<CSubscriberImpl> m_subscriber_impl;
};
}  // namespace eCAL

// SHA-256 (FIPS 180-4).
class Sha256 {
 public:
  Sha256() { reset(); }
  void update(const void* data, size_t len) {
    auto p = static_cast<const uint8_t*>(data);
    total_ += len;
    while (len > 0) {
      size_t n = std::min(len, sizeof(block_) - used_);
      std::memcpy(block_ + used_, p, n);
      used_ += n;
      p += n;
      len -= n;
      if (used_ == sizeof(block_)) {
        compress(block_);
        used_ = 0;
      }
    }
  }
  std::string hex() {
    uint64_t bits = total_ * 8;
    uint8_t pad = 0x80;
    update(&pad, 1);
    uint8_t zero = 0;
    while (used_ != 56) update(&zero, 1);
    uint8_t len_be[8];
    for (int i = 0; i < 8; i++) len_be[i] = uint8_t(bits >> (56 - 8 * i));
    update(len_be, 8);
    char out[65];
    for (int i = 0; i < 8; i++) std::snprintf(out + 8 * i, 9, "%08x", h_[i]);
    return std::string(out, 64);
  }

 private:
  static uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }
  void reset() {
    static const uint32_t init[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                     0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    std::memcpy(h_, init, sizeof(h_));
    used_ = 0;
    total_ = 0;
  }
  void compress(const uint8_t* b) {
    static const uint32_t k[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
      w[i] = uint32_t(b[4 * i]) << 24 | uint32_t(b[4 * i + 1]) << 16 | uint32_t(b[4 * i + 2]) << 8 | b[4 * i + 3];
    for (int i = 16; i < 64; i++) {
      uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h_[0], bb = h_[1], c = h_[2], d = h_[3], e = h_[4], f = h_[5], g = h_[6], h = h_[7];
    for (int i = 0; i < 64; i++) {
      uint32_t t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
      uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & bb) ^ (a & c) ^ (bb & c));
      h = g;
      g = f;
      f = e;
      e = d + t1;
      d = c;
      c = bb;
      bb = a;
      a = t1 + t2;
    }
    h_[0] += a;
    h_[1] += bb;
    h_[2] += c;
    h_[3] += d;
    h_[4] += e;
    h_[5] += f;
    h_[6] += g;
    h_[7] += h;
  }
  uint32_t h_[8];
  uint8_t block_[64];
  size_t used_;
  uint64_t total_;
};

struct Digest {
  Sha256 sha;
  uint64_t count = 0, bytes = 0;
  void update(const void* msg, size_t len, bool hashing) {
    if (hashing) {
      uint8_t le[8];
      for (int i = 0; i < 8; i++) le[i] = uint8_t(uint64_t(len) >> (8 * i));
      sha.update(le, 8);
      sha.update(msg, len);
    }
    count++;
    bytes += len;
  }
};

struct Args {
  std::string role;
  std::vector<std::string> topics;
  size_t size = 10;
  uint64_t count = 10;
  double rate = 10.0, wait_subscriber = 20.0, linger = 1.5, timeout = 30.0, idle = 0.0;
  std::string verify = "mod251", mode, datatype;
  bool hashing = true;
  // scale role
  size_t scale_topics = 10, expect = 1;
  double duration = 120.0, settle = 3.0, window = 5.0;
};

static double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

static double cpu_s() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static std::string json_str(const std::string& s) {
  std::string o = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      o += '\\';
      o += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char b[8];
      std::snprintf(b, sizeof b, "\\u%04x", c);
      o += b;
    } else {
      o += c;
    }
  }
  return o + "\"";
}

[[noreturn]] static void fail(const std::string& role, const std::string& why) {
  std::printf("{\"role\":%s,\"impl\":\"ecal-native\",\"error\":%s}\n", json_str(role).c_str(), json_str(why).c_str());
  std::fflush(stdout);
  std::exit(2);
}

// The loaded library must be eCAL 6.1.1, configured as the harness wrote it: UDP only, the mode
// asked for. Anything else would measure or test something else: fail loudly.
static void check_ecal(const Args& a) {
  const std::string& v = eCAL::GetVersionString();
  if (v.find("6.1.1") == std::string::npos) fail(a.role, "loaded eCAL reports version " + v + ", not 6.1.1");
  const auto& pc = eCAL::GetPublisherConfiguration();
  const auto& sc = eCAL::GetSubscriberConfiguration();
  std::string problems;
  if (pc.layer.shm.enable || !pc.layer.udp.enable || pc.layer.tcp.enable) problems += " publisher layers are not UDP only;";
  if (sc.layer.shm.enable || !sc.layer.udp.enable || sc.layer.tcp.enable) problems += " subscriber layers are not UDP only;";
  if (eCAL::Config::IsShmRecEnabled() || eCAL::Config::IsTcpRecEnabled() || !eCAL::Config::IsUdpMulticastRecEnabled())
    problems += " receive layers are not UDP only;";
  if (!a.mode.empty() && eCAL::Config::IsNetworkEnabled() != (a.mode == "network"))
    problems += " communication mode is not " + a.mode + ";";
  if (!problems.empty())
    fail(a.role, "eCAL configuration (" + eCAL::Config::GetLoadedEcalIniPath() + ") does not read back as set:" + problems);
}

static int run_pub(const Args& a) {
  eCAL::Initialize("ecal_native_pub", eCAL::Init::Default);
  check_ecal(a);
  eCAL::SDataTypeInformation dti{"bytes", "raw", ""};
  std::vector<std::unique_ptr<eCAL::CPublisher>> pubs;
  for (const auto& t : a.topics) pubs.emplace_back(new eCAL::CPublisher(t, dti, eCAL::GetPublisherConfiguration()));
  double deadline = now_s() + a.wait_subscriber;
  for (;;) {
    bool all = true;
    for (auto& p : pubs) all = all && p->GetSubscriberCount() > 0;
    if (all) break;
    if (now_s() > deadline) {
      std::printf("{\"role\":\"pub\",\"impl\":\"ecal-native\",\"error\":\"no subscriber\"}\n");
      std::fflush(stdout);
      pubs.clear();
      eCAL::Finalize();
      return 1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  // base[j] = j mod 251, so payload k = base[k mod 251 ..][..size] has byte i = (i + k) mod 251.
  std::vector<uint8_t> base(a.size + 251);
  for (size_t j = 0; j < base.size(); j++) base[j] = uint8_t(j % 251);
  std::vector<Digest> digests(a.topics.size());
  double period = a.rate > 0 ? 1.0 / a.rate : 0.0;
  double start = now_s();
  double cpu0 = cpu_s();
  for (uint64_t k = 0; k < a.count; k++) {
    const uint8_t* payload = base.data() + k % 251;
    for (size_t i = 0; i < pubs.size(); i++)
      if (pubs[i]->Send(payload, a.size, -1)) digests[i].update(payload, a.size, a.hashing);
    if (period > 0) {
      double delay = start + period * double(k + 1) - now_s();
      if (delay > 0) std::this_thread::sleep_for(std::chrono::duration<double>(delay));
    }
  }
  double elapsed = now_s() - start;
  double cpu = cpu_s() - cpu0;
  std::this_thread::sleep_for(std::chrono::duration<double>(a.linger));
  for (size_t i = 0; i < pubs.size(); i++) {
    auto& d = digests[i];
    std::printf(
        "{\"role\":\"pub\",\"impl\":\"ecal-native\",\"topic\":%s,\"sent\":%" PRIu64 ",\"bytes\":%" PRIu64
        ",\"sha256\":\"%s\",\"send_s\":%.6f,\"cpu_s\":%.6f}\n",
        json_str(a.topics[i]).c_str(), d.count, d.bytes, d.sha.hex().c_str(), elapsed, cpu);
  }
  std::fflush(stdout);
  pubs.clear();
  eCAL::Finalize();
  return 0;
}

struct TopicState {
  std::mutex m;
  Digest d;
  bool ok = true;
  std::set<std::pair<std::string, std::string>> types;
  int64_t clock_first = 0, clock_last = 0;
  double first = -1, last = -1;
};

static int run_sub(const Args& a) {
  eCAL::Initialize("ecal_native_sub", eCAL::Init::Default);
  check_ecal(a);
  eCAL::SDataTypeInformation dti;
  if (!a.datatype.empty()) {
    auto colon = a.datatype.find(':');
    dti.name = a.datatype.substr(0, colon);
    if (colon != std::string::npos) dti.encoding = a.datatype.substr(colon + 1);
  }
  std::vector<std::unique_ptr<TopicState>> states;
  std::vector<std::unique_ptr<eCAL::CSubscriber>> subs;
  bool mod251 = a.verify == "mod251";
  for (const auto& t : a.topics) {
    states.emplace_back(new TopicState);
    TopicState* st = states.back().get();
    subs.emplace_back(new eCAL::CSubscriber(t, dti, eCAL::GetSubscriberConfiguration()));
    bool hashing = a.hashing;
    subs.back()->SetReceiveCallback(
        [st, mod251, hashing](const eCAL::STopicId&, const eCAL::SDataTypeInformation& type,
                              const eCAL::SReceiveCallbackData& data) {
          const auto* buf = static_cast<const uint8_t*>(data.buffer);
          std::lock_guard<std::mutex> lock(st->m);
          uint64_t k = st->d.count;
          if (mod251) {
            size_t n = data.buffer_size;
            for (size_t i = 0; i < n && i < 4096; i++)
              if (buf[i] != uint8_t((i + k) % 251)) {
                st->ok = false;
                break;
              }
            if (n > 4096 && buf[n - 1] != uint8_t((n - 1 + k) % 251)) st->ok = false;
          }
          st->d.update(buf, data.buffer_size, hashing);
          double t = now_s();
          if (st->first < 0) {
            st->first = t;
            st->clock_first = data.send_clock;
          }
          st->last = t;
          st->clock_last = data.send_clock;
          st->types.insert({type.name, type.encoding});
        });
  }
  std::vector<size_t> max_pubs(a.topics.size(), 0);
  double deadline = now_s() + a.timeout;
  while (now_s() < deadline) {
    bool done = true, all_seen = true;
    double latest = -1;
    for (size_t i = 0; i < subs.size(); i++) {
      max_pubs[i] = std::max(max_pubs[i], subs[i]->GetPublisherCount());
      std::lock_guard<std::mutex> lock(states[i]->m);
      done = done && states[i]->d.count >= a.count;
      all_seen = all_seen && states[i]->last >= 0;
      latest = std::max(latest, states[i]->last);
    }
    if (done) break;
    if (a.idle > 0 && all_seen && now_s() - latest >= a.idle) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  for (auto& s : subs) s->RemoveReceiveCallback();
  bool ok = true;
  for (size_t i = 0; i < subs.size(); i++) {
    TopicState& st = *states[i];
    std::lock_guard<std::mutex> lock(st.m);
    ok = ok && st.d.count >= a.count && st.ok;
    std::string types = "[";
    for (const auto& ty : st.types) {
      if (types.size() > 1) types += ",";
      types += "[" + json_str(ty.first) + "," + json_str(ty.second) + "]";
    }
    types += "]";
    std::string span = st.first >= 0 ? std::to_string(st.last - st.first) : "null";
    std::string clocks =
        st.first >= 0 ? "[" + std::to_string(st.clock_first) + "," + std::to_string(st.clock_last) + "]" : "[]";
    std::printf(
        "{\"role\":\"sub\",\"impl\":\"ecal-native\",\"topic\":%s,\"received\":%" PRIu64 ",\"bytes\":%" PRIu64
        ",\"sha256\":\"%s\",\"verified\":%s,\"datatypes\":%s,\"publisher_count_max\":%zu,\"first_to_last_s\":%s,"
        "\"cpu_s\":%.6f,\"clock_first_last\":%s}\n",
        json_str(a.topics[i]).c_str(), st.d.count, st.d.bytes, st.d.sha.hex().c_str(), st.ok ? "true" : "false",
        types.c_str(), max_pubs[i], span.c_str(), cpu_s(), clocks.c_str());
  }
  std::fflush(stdout);
  subs.clear();
  eCAL::Finalize();
  return ok ? 0 : 1;
}

// ---- scale role (`cargo xtask scale`): M publishers and M subscribers on the shared topics
// scale_0 .. scale_{M-1}, no data; JSON events as the Rust `scale_node` prints them.

static uint64_t unix_us() {
  return uint64_t(std::chrono::duration_cast<std::chrono::microseconds>(
                      std::chrono::system_clock::now().time_since_epoch())
                      .count());
}

// On-CPU time of every thread, ns (the scheduler's accounting, as the Rust scale node reads it).
static uint64_t cpu_ns_all_threads() {
  uint64_t sum = 0;
  std::string base = "/proc/self/task";
  if (auto* dir = opendir(base.c_str())) {
    while (auto* e = readdir(dir)) {
      if (e->d_name[0] == '.') continue;
      std::string path = base + "/" + e->d_name + "/schedstat";
      if (FILE* f = std::fopen(path.c_str(), "r")) {
        unsigned long long v = 0;
        if (std::fscanf(f, "%llu", &v) == 1) sum += v;
        std::fclose(f);
      }
    }
    closedir(dir);
  }
  return sum;
}

static long peak_rss_kib() {
  FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return -1;
  char line[256];
  long v = -1;
  while (std::fgets(line, sizeof line, f))
    if (std::strncmp(line, "VmHWM:", 6) == 0) v = std::strtol(line + 6, nullptr, 10);
  std::fclose(f);
  return v;
}

static int run_scale(const Args& a) {
  uint64_t start_us = unix_us();
  double start = now_s();
  eCAL::Initialize("ecal_native_scale", eCAL::Init::Default);
  check_ecal(a);
  eCAL::SDataTypeInformation dti{"bytes", "raw", ""};
  std::vector<std::unique_ptr<eCAL::CPublisher>> pubs;
  std::vector<std::unique_ptr<eCAL::CSubscriber>> subs;
  for (size_t k = 0; k < a.scale_topics; k++) {
    std::string t = "scale_" + std::to_string(k);
    pubs.emplace_back(new eCAL::CPublisher(t, dti, eCAL::GetPublisherConfiguration()));
    subs.emplace_back(new eCAL::CSubscriber(t, dti, eCAL::GetSubscriberConfiguration()));
  }
  double end = start + a.duration;
  auto publishers_seen = [&] {
    size_t total = 0;
    for (auto& s : subs) total += s->GetPublisherCount();
    return total;
  };
  for (;;) {
    bool all = true;
    for (auto& s : subs) all = all && s->GetPublisherCount() >= a.expect;
    if (all) break;
    if (now_s() >= end) {
      std::printf("{\"event\":\"gave_up\",\"after_s\":%.3f}\n", now_s() - start);
      std::fflush(stdout);
      subs.clear();
      pubs.clear();
      eCAL::Finalize();
      return 1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::printf("{\"event\":\"discovered\",\"start_unix_us\":%" PRIu64 ",\"discovered_unix_us\":%" PRIu64
              ",\"after_s\":%.3f}\n",
              start_us, unix_us(), now_s() - start);
  std::fflush(stdout);
  std::this_thread::sleep_for(std::chrono::duration<double>(a.settle));
  uint64_t c0 = cpu_ns_all_threads();
  double t0 = now_s();
  std::this_thread::sleep_for(std::chrono::duration<double>(a.window));
  uint64_t c1 = cpu_ns_all_threads();
  double secs = now_s() - t0;
  std::printf("{\"event\":\"window\",\"cpu_pct\":%.3f,\"peak_rss_kib\":%ld,\"publishers_seen\":%zu}\n",
              double(c1 - c0) / 1e9 / secs * 100.0, peak_rss_kib(), publishers_seen());
  std::fflush(stdout);
  while (now_s() < end) {
    // Publishers each subscriber sees, summed: a process that is gone lowers it by M.
    std::printf("{\"event\":\"tick\",\"unix_us\":%" PRIu64 ",\"count\":%zu,\"drop_per_process\":%zu}\n", unix_us(),
                publishers_seen(), a.scale_topics);
    std::fflush(stdout);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  subs.clear();
  pubs.clear();
  eCAL::Finalize();
  return 0;
}

int main(int argc, char** argv) {
  Args a;
  if (argc < 2) fail("", "usage: ecal_native pub|sub --topic T ...");
  a.role = argv[1];
  for (int i = 2; i < argc; i++) {
    std::string k = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) fail(a.role, "missing value for " + k);
      return argv[++i];
    };
    auto num = [&]() -> double {
      std::string v = val();
      char* end = nullptr;
      double d = std::strtod(v.c_str(), &end);
      if (end == v.c_str() || *end != '\0') fail(a.role, "not a number for " + k + ": " + v);
      return d;
    };
    if (k == "--topic") a.topics.push_back(val());
    else if (k == "--size") a.size = size_t(num());
    else if (k == "--count") a.count = uint64_t(num());
    else if (k == "--rate") a.rate = num();
    else if (k == "--wait-subscriber") a.wait_subscriber = num();
    else if (k == "--linger") a.linger = num();
    else if (k == "--timeout") a.timeout = num();
    else if (k == "--idle") a.idle = num();
    else if (k == "--verify") a.verify = val();
    else if (k == "--mode") a.mode = val();
    else if (k == "--datatype") a.datatype = val();
    else if (k == "--no-digest") a.hashing = false;
    else if (k == "--topics") a.scale_topics = size_t(num());
    else if (k == "--expect") a.expect = size_t(num());
    else if (k == "--duration") a.duration = num();
    else if (k == "--settle") a.settle = num();
    else if (k == "--window") a.window = num();
    else fail(a.role, "unknown argument " + k);
  }
  if (a.role == "scale") return run_scale(a);
  if (a.topics.empty()) fail(a.role, "--topic is required");
  if (a.role == "pub") return run_pub(a);
  if (a.role == "sub") return run_sub(a);
  fail(a.role, "role must be pub, sub or scale");
}
