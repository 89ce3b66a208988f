#include "safetensors.h"

#include <cstring>
#include <limits>

namespace dyninfer {

namespace {

constexpr uint64_t kMaxHeader = 100u << 20;  // the format's own limit (100 MB)

// Minimal strict JSON reader over the header: objects, arrays, strings, non-negative integers.
struct Json {
  const char* p;
  const char* end;

  [[noreturn]] void fail(const std::string& what) const {
    throw ArtefactError("safetensors header: " + what);
  }
  void ws() {
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) ++p;
  }
  bool peek(char c) {
    ws();
    return p < end && *p == c;
  }
  void expect(char c) {
    ws();
    if (p >= end || *p != c) fail(std::string("expected '") + c + "' at byte " + std::to_string(pos()));
    ++p;
  }
  size_t pos() const { return static_cast<size_t>(p - begin_); }
  const char* begin_;

  static void put_utf8(std::string& s, uint32_t cp) {
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else if (cp < 0x800) {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      s += static_cast<char>(0xE0 | (cp >> 12));
      s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      s += static_cast<char>(0xF0 | (cp >> 18));
      s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }
  uint32_t hex4() {
    if (end - p < 4) fail("truncated \\u escape");
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i, ++p) {
      const char c = *p;
      v <<= 4;
      if (c >= '0' && c <= '9') v |= static_cast<uint32_t>(c - '0');
      else if (c >= 'a' && c <= 'f') v |= static_cast<uint32_t>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') v |= static_cast<uint32_t>(c - 'A' + 10);
      else fail("bad \\u escape at byte " + std::to_string(pos()));
    }
    return v;
  }
  std::string string() {
    expect('"');
    std::string s;
    while (true) {
      if (p >= end) fail("unterminated string");
      const char c = *p++;
      if (c == '"') return s;
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in a string at byte " + std::to_string(pos()));
      if (c != '\\') {
        s += c;
        continue;
      }
      if (p >= end) fail("unterminated escape");
      const char e = *p++;
      switch (e) {
        case '"': s += '"'; break;
        case '\\': s += '\\'; break;
        case '/': s += '/'; break;
        case 'b': s += '\b'; break;
        case 'f': s += '\f'; break;
        case 'n': s += '\n'; break;
        case 'r': s += '\r'; break;
        case 't': s += '\t'; break;
        case 'u': {
          uint32_t cp = hex4();
          if (cp >= 0xD800 && cp < 0xDC00) {  // surrogate pair
            if (end - p < 2 || p[0] != '\\' || p[1] != 'u') fail("unpaired surrogate");
            p += 2;
            const uint32_t lo = hex4();
            if (lo < 0xDC00 || lo >= 0xE000) fail("bad surrogate pair");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp < 0xE000) {
            fail("unpaired surrogate");
          }
          put_utf8(s, cp);
          break;
        }
        default: fail(std::string("bad escape '\\") + e + "'");
      }
    }
  }
  uint64_t integer() {
    ws();
    if (p >= end || *p < '0' || *p > '9') fail("expected a non-negative integer at byte " + std::to_string(pos()));
    uint64_t v = 0;
    const char* start = p;
    while (p < end && *p >= '0' && *p <= '9') {
      const uint64_t d = static_cast<uint64_t>(*p - '0');
      if (v > (std::numeric_limits<uint64_t>::max() - d) / 10) fail("integer out of range");
      v = v * 10 + d;
      ++p;
    }
    if (p - start > 1 && *start == '0') fail("integer with a leading zero");
    if (p < end && (*p == '.' || *p == 'e' || *p == 'E')) fail("expected an integer, got a float");
    return v;
  }
  // {"key": value, ...}: member(key) reads each value; duplicate keys are the caller's to refuse.
  template <class Member>
  void object(Member&& member) {
    expect('{');
    for (bool first = true; !peek('}'); first = false) {
      if (!first) expect(',');
      const std::string key = string();
      expect(':');
      member(key);
    }
    expect('}');
  }

  std::vector<uint64_t> int_array() {
    expect('[');
    std::vector<uint64_t> v;
    if (peek(']')) {
      ++p;
      return v;
    }
    while (true) {
      v.push_back(integer());
      if (v.size() > 64) fail("array longer than 64 entries");
      if (peek(',')) {
        ++p;
        continue;
      }
      expect(']');
      return v;
    }
  }
};

size_t dtype_size(const std::string& d) {
  if (d == "F32" || d == "I32" || d == "U32") return 4;
  if (d == "F64" || d == "I64" || d == "U64") return 8;
  if (d == "F16" || d == "BF16" || d == "I16" || d == "U16") return 2;
  if (d == "I8" || d == "U8" || d == "BOOL") return 1;
  return 0;
}

}  // namespace

int64_t StTensor::numel() const {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

StFile parse_safetensors(const uint8_t* bytes, size_t n) {
  if (bytes == nullptr || n < 8) throw ArtefactError("not a safetensors file: " + std::to_string(n) + " bytes");
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | bytes[i];
  if (hlen < 2 || hlen > kMaxHeader || hlen > n - 8)
    throw ArtefactError("not a safetensors file or truncated: header length " + std::to_string(hlen) + " in a file of " +
                        std::to_string(n) + " bytes");
  const uint8_t* data = bytes + 8 + hlen;
  const size_t data_size = n - 8 - static_cast<size_t>(hlen);
  Json js{reinterpret_cast<const char*>(bytes + 8), reinterpret_cast<const char*>(bytes + 8 + hlen),
          reinterpret_cast<const char*>(bytes + 8)};
  StFile out;
  js.object([&](const std::string& key) {
    if (key == "__metadata__") {
      js.object([&](const std::string& k) {
        if (!out.metadata.emplace(k, js.string()).second) js.fail("duplicate metadata key");
      });
      return;
    }
    StTensor t;
    bool have_dtype = false, have_shape = false, have_off = false;
    std::vector<uint64_t> off;
    js.object([&](const std::string& field) {
      if (field == "dtype" && !have_dtype) {
        t.dtype = js.string();
        have_dtype = true;
      } else if (field == "shape" && !have_shape) {
        for (uint64_t s : js.int_array()) {
          if (s > (1ull << 40)) js.fail("tensor '" + key + "': dimension " + std::to_string(s) + " too large");
          t.shape.push_back(static_cast<int64_t>(s));
        }
        have_shape = true;
      } else if (field == "data_offsets" && !have_off) {
        off = js.int_array();
        have_off = true;
      } else {
        js.fail("tensor '" + key + "': unexpected or repeated field '" + field + "'");
      }
    });
    if (!have_dtype || !have_shape || !have_off)
      js.fail("tensor '" + key + "': needs dtype, shape and data_offsets");
    const size_t es = dtype_size(t.dtype);
    if (es == 0) js.fail("tensor '" + key + "': unknown dtype '" + t.dtype + "'");
    if (off.size() != 2 || off[0] > off[1] || off[1] > data_size)
      js.fail("tensor '" + key + "': data_offsets outside the " + std::to_string(data_size) +
              "-byte data section (file truncated or corrupt)");
    uint64_t numel = 1;
    for (int64_t s : t.shape) {
      if (s != 0 && numel > (1ull << 40) / static_cast<uint64_t>(s)) js.fail("tensor '" + key + "': too many elements");
      numel *= static_cast<uint64_t>(s);
    }
    if (numel * es != off[1] - off[0])
      js.fail("tensor '" + key + "': " + std::to_string(off[1] - off[0]) + " bytes for " + t.dtype + " of " +
              std::to_string(numel) + " elements");
    t.data = data + off[0];
    t.nbytes = static_cast<size_t>(off[1] - off[0]);
    if (!out.tensors.emplace(key, std::move(t)).second) js.fail("duplicate tensor '" + key + "'");
  });
  js.ws();
  if (js.p != js.end) js.fail("trailing bytes after the header object");
  return out;
}

}  // namespace dyninfer
