// A compiled gRPC load generator for bench/bench_service.py's Dispatch rows (built and run by
// bench/loadgen.py). The bench's Python clients burn ~0.36 ms of CPU per call, so at 2,000 calls/s they
// take most of a core from the 2-core machine the server they measure runs on; this one sends the same
// calls for a fraction of that (it prints its own CPU seconds so the bench can show the cost per call).
//
// It uses gRPC's generic API (GenericStub, ByteBuffer): the requests arrive pre-serialized, so it needs
// no generated code and knows nothing of the contract.
//
//   dispatch_load --target 127.0.0.1:PORT --method /hashpivot.v1.PlannerService/Dispatch
//       --requests FILE --out FILE --clients 30 --seconds 10 [--rate 2000] [--metadata KEY=VALUE]...
//
// --requests: the request messages, each a 4-byte little-endian length then that many bytes. Client i
// sends them round-robin starting at message (7 i) mod n, so clients do not all send the same message.
// --clients: threads, each with its own channel and connection (a local subchannel pool: channels with
//   the same target and arguments would otherwise share one connection), connected by one call before
//   the clock starts; all start together START_LEAD_S after the last one connected.
// --rate absent: closed loop, each client sends its next call when the last returns, for --seconds.
// --rate R: open loop, the clients together send R calls/s, each client floor(seconds * R / clients)
//   calls on its own fixed schedule (phase spread over one interval); a call is timed from when it was
//   due, not when it was sent, so a stall counts against every call it delays (no coordinated omission).
//   One call in flight per client, as the bench's Python clients.
// These are the semantics of bench/bench_service.py's _closed_loop and _open_loop.
//
// Output: --out gets every OK call's latency in seconds (native doubles); stdout gets `calls N`,
// `span_s S` (closed loop: --seconds, as the Python clients; open loop: from the common start to the
// end of the last call), `cpu_s C` (this process's user + system CPU over the measured window,
// getrusage), and a `failed CODE N` line per status code of calls that did not return OK. Exit 0 only
// if every call returned OK; 2 for bad arguments or a client that could not connect; 3 if any call of
// the measured window failed.

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>
#include <grpcpp/completion_queue.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/channel_arguments.h>
#include <grpcpp/support/slice.h>
#include <grpcpp/support/status.h>
#include <sys/resource.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace {

// Every client starts this long after the last one connected: time for each to wake before its first
// call is due (an open-loop client late at the start would count it). bench_service.py's START_LEAD_S.
constexpr double START_LEAD_S = 0.3;
// A call's deadline, as the Python clients' timeout=10: a hung call fails (DEADLINE_EXCEEDED) rather
// than hanging the bench.
constexpr int CALL_DEADLINE_S = 10;
// The connecting call may wait for a server still starting up, as the Python clients' timeout=30.
constexpr int CONNECT_DEADLINE_S = 30;
// Client i's first message: spreads the clients over the messages, as the seeds of the Python clients
// (bench_service.py's _requests) do.
constexpr size_t CLIENT_MESSAGE_STRIDE = 7;

double now_s() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

void sleep_until_s(double when_s) {
  timespec t;
  t.tv_sec = static_cast<time_t>(when_s);
  t.tv_nsec = static_cast<long>((when_s - t.tv_sec) * 1e9);
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, nullptr) != 0) {
  }  // EINTR: sleep on to the same absolute time
}

double cpu_s() {
  rusage u;
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_utime.tv_usec * 1e-6 + u.ru_stime.tv_sec + u.ru_stime.tv_usec * 1e-6;
}

[[noreturn]] void die(const std::string& message) {
  std::fprintf(stderr, "dispatch_load: %s\n", message.c_str());
  std::fflush(stderr);
  std::_Exit(2);  // not exit(): other client threads may still be inside gRPC
}

struct Options {
  std::string target, method, requests_path, out_path;
  std::vector<std::pair<std::string, std::string>> metadata;
  int clients = 0;
  double seconds = 0;
  double rate = 0;  // total calls/s; 0: closed loop
};

double positive_number(const std::string& flag, const char* text) {
  char* end = nullptr;
  double value = std::strtod(text, &end);
  if (end == text || *end != '\0' || !(value > 0) || value > 1e9) {
    die(flag + " must be a positive number, got '" + text + "'");
  }
  return value;
}

int positive_int(const std::string& flag, const char* text) {
  char* end = nullptr;
  long value = std::strtol(text, &end, 10);
  if (end == text || *end != '\0' || value < 1 || value > 100000) {
    die(flag + " must be a whole number from 1 to 100000, got '" + text + "'");
  }
  return static_cast<int>(value);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; i += 2) {
    std::string flag = argv[i];
    if (i + 1 >= argc) die(flag + " needs a value");
    const char* value = argv[i + 1];
    if (flag == "--target") o.target = value;
    else if (flag == "--method") o.method = value;
    else if (flag == "--requests") o.requests_path = value;
    else if (flag == "--out") o.out_path = value;
    else if (flag == "--clients") o.clients = positive_int(flag, value);
    else if (flag == "--seconds") o.seconds = positive_number(flag, value);
    else if (flag == "--rate") o.rate = positive_number(flag, value);
    else if (flag == "--metadata") {
      const char* eq = std::strchr(value, '=');
      if (eq == nullptr) die("--metadata must be KEY=VALUE, got '" + std::string(value) + "'");
      o.metadata.emplace_back(std::string(value, eq), std::string(eq + 1));
    } else die("unknown flag " + flag);
  }
  if (o.target.empty() || o.method.empty() || o.requests_path.empty() || o.out_path.empty()) {
    die("--target, --method, --requests and --out are required");
  }
  if (o.clients < 1 || o.seconds <= 0) die("--clients and --seconds are required");
  return o;
}

std::vector<grpc::ByteBuffer> read_requests(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) die("--requests: cannot read " + path);
  std::vector<grpc::ByteBuffer> requests;
  unsigned char size_le[4];
  while (in.read(reinterpret_cast<char*>(size_le), 4)) {
    uint32_t size = size_le[0] | size_le[1] << 8 | size_le[2] << 16 | static_cast<uint32_t>(size_le[3]) << 24;
    std::string bytes(size, '\0');
    if (!in.read(bytes.data(), size)) die("--requests: " + path + " ends inside a message");
    grpc::Slice slice(bytes);
    requests.emplace_back(&slice, 1);
  }
  if (requests.empty()) die("--requests: " + path + " holds no message");
  return requests;
}

// The moment every client starts, set once all have connected.
class StartLine {
 public:
  explicit StartLine(int clients) : waiting_(clients) {}

  void connected() {
    std::lock_guard<std::mutex> lock(mutex_);
    --waiting_;
    changed_.notify_all();
  }

  double wait_for_start() {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [this] { return start_s_ > 0; });
    return start_s_;
  }

  double set_when_all_connected() {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [this] { return waiting_ == 0; });
    start_s_ = now_s() + START_LEAD_S;
    changed_.notify_all();
    return start_s_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  int waiting_;
  double start_s_ = 0;
};

class Client {
 public:
  Client(const Options& o, int index, const std::vector<grpc::ByteBuffer>& requests)
      : options_(o),
        index_(index),
        requests_(requests),
        first_(index * CLIENT_MESSAGE_STRIDE % requests.size()),
        next_(first_) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // its own connection, not a shared subchannel
    channel_ = grpc::CreateCustomChannel(o.target, grpc::InsecureChannelCredentials(), args);
    stub_ = std::make_unique<grpc::GenericStub>(channel_);
  }

  void run(StartLine& line) {
    grpc::Status first = call(CONNECT_DEADLINE_S);
    if (!first.ok()) {
      die("client " + std::to_string(index_) + " could not connect to " + options_.target + ": code " +
          std::to_string(first.error_code()) + " " + first.error_message());
    }
    next_ = first_;  // the measured calls start from the message the connecting call sent, as in Python
    line.connected();
    double start_s = line.wait_for_start();
    if (options_.rate > 0) open_loop(start_s);
    else closed_loop(start_s);
  }

  std::vector<double> latencies_s;
  std::map<int, long> failed_by_code;
  double end_s = 0;

 private:
  void closed_loop(double start_s) {
    sleep_until_s(start_s);
    const double stop_s = start_s + options_.seconds;
    double begin_s;
    while ((begin_s = now_s()) < stop_s) record(call(CALL_DEADLINE_S), begin_s);
  }

  void open_loop(double start_s) {
    const double rate = options_.rate / options_.clients;
    const double interval_s = 1.0 / rate;
    std::mt19937_64 random(index_);
    const double first_s = start_s + interval_s * std::uniform_real_distribution<double>(0, 1)(random);
    const long calls = static_cast<long>(options_.seconds * rate);
    for (long k = 0; k < calls; ++k) {
      const double due_s = first_s + k * interval_s;
      if (due_s > now_s()) sleep_until_s(due_s);
      record(call(CALL_DEADLINE_S), due_s);
    }
    end_s = now_s();
  }

  void record(const grpc::Status& status, double since_s) {
    if (status.ok()) latencies_s.push_back(now_s() - since_s);
    else ++failed_by_code[status.error_code()];
  }

  grpc::Status call(int deadline_s) {
    grpc::ClientContext context;
    for (const auto& [key, value] : options_.metadata) context.AddMetadata(key, value);
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(deadline_s));
    const grpc::ByteBuffer& request = requests_[next_];
    next_ = (next_ + 1) % requests_.size();
    auto rpc = stub_->PrepareUnaryCall(&context, options_.method, request, &queue_);
    rpc->StartCall();
    grpc::ByteBuffer reply;
    grpc::Status status;
    rpc->Finish(&reply, &status, this);
    void* tag;
    bool ok;
    if (!queue_.Next(&tag, &ok) || tag != this || !ok) {
      return grpc::Status(grpc::StatusCode::INTERNAL, "the completion queue returned no result");
    }
    return status;
  }

  const Options& options_;
  const int index_;
  const std::vector<grpc::ByteBuffer>& requests_;
  const size_t first_;
  size_t next_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<grpc::GenericStub> stub_;
  grpc::CompletionQueue queue_;
};

void write_latencies(const std::string& path, const std::vector<std::unique_ptr<Client>>& clients) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  for (const auto& c : clients) {
    out.write(reinterpret_cast<const char*>(c->latencies_s.data()), c->latencies_s.size() * sizeof(double));
  }
  if (!out) die("--out: cannot write " + path);
}

// One line per field, then one per failed status code; -> whether every call returned OK.
bool report(const Options& o, const std::vector<std::unique_ptr<Client>>& clients, double start_s, double cpu) {
  long calls = 0;
  double end_s = start_s;
  std::map<int, long> failed;
  for (const auto& c : clients) {
    calls += c->latencies_s.size();
    end_s = std::max(end_s, c->end_s);
    for (const auto& [code, n] : c->failed_by_code) failed[code] += n;
  }
  std::printf("calls %ld\nspan_s %.6f\ncpu_s %.6f\n", calls, o.rate > 0 ? end_s - start_s : o.seconds, cpu);
  for (const auto& [code, n] : failed) std::printf("failed %d %ld\n", code, n);
  return failed.empty();
}

}  // namespace

int main(int argc, char** argv) {
  const Options options = parse(argc, argv);
  const std::vector<grpc::ByteBuffer> requests = read_requests(options.requests_path);
  std::vector<std::unique_ptr<Client>> clients;
  for (int i = 0; i < options.clients; ++i) clients.push_back(std::make_unique<Client>(options, i, requests));
  StartLine line(options.clients);
  std::vector<std::thread> threads;
  for (auto& c : clients) threads.emplace_back([&c, &line] { c->run(line); });
  const double start_s = line.set_when_all_connected();
  sleep_until_s(start_s);
  const double cpu_at_start = cpu_s();
  for (auto& t : threads) t.join();
  const double cpu = cpu_s() - cpu_at_start;
  write_latencies(options.out_path, clients);
  const bool all_ok = report(options, clients, start_s, cpu);
  std::fflush(stdout);
  return all_ok ? 0 : 3;
}
