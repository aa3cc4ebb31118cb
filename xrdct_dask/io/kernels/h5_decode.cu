// Batched decoding of HDF5 chunks on the GPU: bitshuffle-LZ4 (filter 32008), LZ4 (32004), none.
//
// One chunk = one frame of frame_bytes bytes; chunk f is buf[beg[f]:end[f]].  Three kernels:
//
//   h5_scan    one thread per frame: checks the chunk's framing exactly as the CPU path does
//              (io/hdf5.py: _check_bslz4 for 32008, _lz4_h5 for 32004) and lists its blocks in a
//              table (where the compressed bytes start, how many, how many they decode to);
//              copies bitshuffle's raw tail (the last nelem % 8 elements).
//   h5_blocks  one warp per table entry: LZ4-decodes the block (into shared memory, then
//              bit-unshuffles it straight into the frame; LZ4 blocks of 32004 decode in place).
//   h5_status  one thread per frame: the FrameStatus code (0 OK, 1 TRUNCATED, 3 CORRUPT_HEADER,
//              7 SIZE_MISMATCH).
//
// Errors: err[f] holds (block << 8 | code) of the first failing block, kept with atomicMin, so
// that the code is the one the CPU path (which walks blocks in order) reports.  Every read is
// checked against the chunk's bytes and every write against the frame: corrupt input never
// reads or writes out of bounds.
//
// LZ4 rules: bitshuffle decodes its blocks with LZ4_decompress_fast (lz4 1.10: must produce
// exactly the block's bytes and consume exactly its stored length; literals end either at the
// block's end or >= 12 bytes before it; a match ends >= 5 bytes before it); the 32004 path uses
// LZ4_decompress_safe (the same end rules on input and output).  Both are applied here with
// every bound checked; a zero offset (which LZ4 leaves undefined) is corrupt.
//
// Parallel decoding within a warp: all 32 lanes parse the same tokens (uniform control flow, no
// shuffles), and copy literals and matches together, each lane its own bytes.  An overlapping
// match (offset < length) is periodic: byte i of it is dst[op - off + i % off], which depends
// only on bytes written before the match, so the lanes' order does not matter.
//
// The same source compiles as C++ with -DXR_HOST (g++, tests on a CPU): a warp is one thread that
// runs each WARP_FOR loop backwards, so a copy that relied on the lanes' order would show there.

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef long long i64;
typedef unsigned long long u64;

#define XR_OK 0
#define XR_TRUNCATED 1
#define XR_CORRUPT 3
#define XR_SIZE 7
#define F_NONE 0
#define F_LZ4 32004
#define F_BSLZ4 32008
#define RAW_PIECE 65536
#define NO_ERROR 0xFFFFFFFFFFFFFFFFull

#ifdef XR_HOST
#define XR_DEV static inline
#define XR_SYNC()
#define WARP_FOR(i, lo, hi) for (i64 i = (i64)(hi) - 1; i >= (i64)(lo); --i)
static inline void xr_atomic_min(u64* p, u64 v) { if (v < *p) *p = v; }
#else
#define XR_DEV __device__ __forceinline__
#define XR_SYNC() __syncwarp()
#define WARP_FOR(i, lo, hi) for (i64 i = (i64)(lo) + lane; i < (i64)(hi); i += 32)
__device__ __forceinline__ void xr_atomic_min(u64* p, u64 v) {
    atomicMin((unsigned long long*)p, (unsigned long long)v);
}
#endif

XR_DEV u64 be_read(const u8* p, int nbytes) {
    u64 v = 0;
    for (int i = 0; i < nbytes; ++i) v = (v << 8) | (u64)p[i];
    return v;
}

XR_DEV u64 err_key(i64 block, int code) { return ((u64)block << 8) | (u64)code; }

// ------------------------------------------------------------------------------------------
// framing: one thread per frame
// ------------------------------------------------------------------------------------------
XR_DEV void scan_frame(int f, const u8* buf, const i64* beg, const i64* end, const i64* filt, i64 frame_bytes,
                       int itemsize, const i64* tab_off, i64* tab_src, i64* tab_len, i64* tab_out, i64* nblk,
                       i64* blk_bytes, u64* err, u8* out, i64 smem_bytes) {
    const i64 a = beg[f], b = end[f];
    const i64 t0 = tab_off[f], cap = tab_off[f + 1] - tab_off[f];
    const int fid = (int)filt[f];
    nblk[f] = 0;
    blk_bytes[f] = 0;
    err[f] = NO_ERROR;
    if (b < a) { err[f] = XR_TRUNCATED; return; }
    if (fid == F_NONE) {  // stored as is: one frame of bytes, copied in pieces of RAW_PIECE
        if (b - a != frame_bytes) { err[f] = XR_SIZE; return; }
        i64 k = 0;
        for (i64 p = 0; p < frame_bytes; p += RAW_PIECE, ++k) {
            if (k >= cap) { err[f] = XR_CORRUPT; return; }
            const i64 len = frame_bytes - p < RAW_PIECE ? frame_bytes - p : RAW_PIECE;
            tab_src[t0 + k] = a + p;
            tab_len[t0 + k] = len;
            tab_out[t0 + k] = len;
        }
        blk_bytes[f] = RAW_PIECE;
        nblk[f] = k;
        return;
    }
    if (fid != F_BSLZ4 && fid != F_LZ4) { err[f] = XR_CORRUPT; return; }
    if (b - a < 12) { err[f] = XR_TRUNCATED; return; }
    const u64 total = be_read(buf + a, 8);
    const i64 bbytes = (i64)be_read(buf + a + 8, 4);
    if (total != (u64)frame_bytes) { err[f] = XR_SIZE; return; }
    i64 pos = a + 12, k = 0;
    if (fid == F_BSLZ4) {
        // uint64 BE bytes, uint32 BE block bytes; per block of bs elements a uint32 BE length + LZ4
        // bytes; the last block holds the remainder rounded down to 8 elements; nelem % 8 raw after.
        if (bbytes <= 0 || bbytes % (8 * itemsize) != 0) { err[f] = XR_CORRUPT; return; }
        if (bbytes > smem_bytes) { err[f] = XR_CORRUPT; return; }  // the host sends such frames to the CPU
        const i64 bs = bbytes / itemsize, nelem = frame_bytes / itemsize;
        i64 done = 0;
        for (;;) {
            const i64 left = nelem - done;
            const i64 n_el = left >= bs ? bs : left - left % 8;
            if (n_el == 0) break;
            if (pos + 4 > b) { err[f] = XR_TRUNCATED; return; }
            const i64 clen = (i64)be_read(buf + pos, 4);
            const i64 nb = n_el * itemsize;
            if (clen <= 0 || clen > nb + nb / 255 + 16) { err[f] = XR_CORRUPT; return; }
            if (pos + 4 + clen > b) { err[f] = XR_TRUNCATED; return; }
            if (k >= cap) { err[f] = XR_CORRUPT; return; }
            tab_src[t0 + k] = pos + 4;
            tab_len[t0 + k] = clen;
            tab_out[t0 + k] = nb;
            ++k;
            pos += 4 + clen;
            done += n_el;
        }
        const i64 rest = (nelem - done) * itemsize;
        if (pos + rest > b) { err[f] = XR_TRUNCATED; return; }
        if (pos + rest < b) { err[f] = XR_SIZE; return; }
        u8* o = out + (i64)f * frame_bytes + done * itemsize;
        for (i64 i = 0; i < rest; ++i) o[i] = buf[pos + i];
        blk_bytes[f] = bbytes;
        nblk[f] = k;
        return;
    }
    // F_LZ4: uint64 BE bytes, uint32 BE block bytes; per block a uint32 BE length + that many
    // bytes, raw when the length equals the block's bytes.  The CPU path decodes each block as it
    // walks: a framing error at block k counts after the decoding errors of blocks < k.
    if (bbytes <= 0) { err[f] = XR_CORRUPT; return; }
    i64 produced = 0;
    u64 e = NO_ERROR;
    while (produced < frame_bytes) {
        const i64 n_out = bbytes < frame_bytes - produced ? bbytes : frame_bytes - produced;
        if (pos + 4 > b) { e = err_key(k, XR_TRUNCATED); break; }
        const i64 clen = (i64)be_read(buf + pos, 4);
        pos += 4;
        if (pos + clen > b) { e = err_key(k, XR_TRUNCATED); break; }
        if (k >= cap) { e = err_key(k, XR_CORRUPT); break; }
        tab_src[t0 + k] = pos;
        tab_len[t0 + k] = clen;
        tab_out[t0 + k] = n_out;
        ++k;
        pos += clen;
        produced += n_out;
    }
    if (e == NO_ERROR && pos != b) e = err_key(k, XR_SIZE);
    err[f] = e;
    blk_bytes[f] = bbytes;
    nblk[f] = k;
}

// ------------------------------------------------------------------------------------------
// LZ4 block, one warp
// ------------------------------------------------------------------------------------------
XR_DEV void copy_match(u8* dst, i64 op, i64 off, i64 ml, int lane) {
    if (off == 1) {  // a run of one byte (bit-planes of zeros)
        const u8 v = dst[op - 1];
        WARP_FOR(i, 0, ml) dst[op + i] = v;
    } else if (off >= ml) {
        WARP_FOR(i, 0, ml) dst[op + i] = dst[op - off + i];
    } else {  // overlapping: periodic with period off
        const u32 o = (u32)off;
        WARP_FOR(i, 0, ml) dst[op + i] = dst[op - off + (i64)((u32)i % o)];
    }
}

// Decode the LZ4 block src[0:srclen] into exactly dst[0:dstlen]; 0 = OK, 1 = corrupt.
// fast = 1: LZ4_decompress_fast's rules (bitshuffle), 0: LZ4_decompress_safe's (HDF5 LZ4 filter).
XR_DEV int lz4_block(const u8* src, i64 srclen, u8* dst, i64 dstlen, int fast, int lane) {
    i64 ip = 0, op = 0;
    for (;;) {
        if (ip >= srclen) return 1;
        const u32 token = src[ip++];
        i64 ll = token >> 4;
        if (ll == 15) {
            if (!fast && ip >= srclen - 15) return 1;
            u32 s;
            do {
                if (ip >= srclen) return 1;
                s = src[ip++];
                ll += s;
                if (!fast && ip > srclen - 15) return 1;
            } while (s == 255);
        }
        if (ll > srclen - ip) return 1;
        if (fast) {
            if (ll > dstlen - op) return 1;
            WARP_FOR(i, 0, ll) dst[op + i] = src[ip + i];
            op += ll;
            ip += ll;
            XR_SYNC();
            if (dstlen - op < 12) {
                if (op == dstlen) break;  // the last literals
                return 1;
            }
        } else {
            const int last = (op + ll > dstlen - 12) || (ip + ll > srclen - 8);
            if (last && (ip + ll != srclen || op + ll > dstlen)) return 1;
            WARP_FOR(i, 0, ll) dst[op + i] = src[ip + i];
            op += ll;
            ip += ll;
            XR_SYNC();
            if (last) break;
        }
        if (ip + 2 > srclen) return 1;
        const i64 off = (i64)src[ip] | ((i64)src[ip + 1] << 8);
        ip += 2;
        i64 ml = token & 15;
        if (ml == 15) {
            u32 s;
            do {
                if (ip >= srclen) return 1;
                s = src[ip++];
                ml += s;
                if (!fast && ip > srclen - 4) return 1;
            } while (s == 255);
        }
        ml += 4;
        if (ml > dstlen - 5 - op) return 1;  // a match ends >= 5 bytes before the block's end
        if (off == 0 || off > op) return 1;
        copy_match(dst, op, off, ml, lane);
        op += ml;
        XR_SYNC();
    }
    return (ip == srclen && op == dstlen) ? 0 : 1;
}

// ------------------------------------------------------------------------------------------
// bit-unshuffle: bit j of element i is bit (j * nel + i) of the block (bytes LSB first), i.e.
// bit-row j (nel / 8 bytes), byte i / 8, bit i % 8.  One lane per 8 elements: for each of the
// element's bytes b, the 8 bit-rows 8b..8b+7 give an 8x8 bit matrix; its transpose holds byte b
// of the 8 elements.
// ------------------------------------------------------------------------------------------
XR_DEV u64 transpose8(u64 x) {
    u64 t;
    t = (x ^ (x >> 7)) & 0x00AA00AA00AA00AAull;
    x = x ^ t ^ (t << 7);
    t = (x ^ (x >> 14)) & 0x0000CCCC0000CCCCull;
    x = x ^ t ^ (t << 14);
    t = (x ^ (x >> 28)) & 0x00000000F0F0F0F0ull;
    x = x ^ t ^ (t << 28);
    return x;
}

template <int K, typename T>
XR_DEV void unshuffle(const u8* s, i64 nel, u8* dst_bytes, int lane) {
    T* dst = (T*)dst_bytes;  // aligned: frames start at multiples of their bytes, blocks of 8 * K
    const i64 row = nel / 8;
    WARP_FOR(t, 0, row) {
        u64 x[K];
        for (int b = 0; b < K; ++b) {
            u64 v = 0;
            for (int r = 0; r < 8; ++r) v |= (u64)s[(i64)(8 * b + r) * row + t] << (8 * r);
            x[b] = transpose8(v);
        }
        for (int c = 0; c < 8; ++c) {
            u64 e = 0;
            for (int b = 0; b < K; ++b) e |= ((x[b] >> (8 * c)) & 0xFFull) << (8 * b);
            dst[8 * t + c] = (T)e;
        }
    }
}

XR_DEV int find_frame(const i64* tab_off, int n, i64 g) {  // tab_off[f] <= g < tab_off[f + 1]
    int lo = 0, hi = n;
    while (hi - lo > 1) {
        const int mid = (lo + hi) / 2;
        if (tab_off[mid] <= g) lo = mid; else hi = mid;
    }
    return lo;
}

XR_DEV void decode_entry(i64 g, int lane, u8* smem, const u8* buf, const i64* filt, int n, i64 frame_bytes,
                         int itemsize, const i64* tab_off, const i64* tab_src, const i64* tab_len,
                         const i64* tab_out, const i64* nblk, const i64* blk_bytes, u64* err, u8* out,
                         i64 smem_bytes) {
    const int f = find_frame(tab_off, n, g);
    const i64 j = g - tab_off[f];
    if (j >= nblk[f]) return;
    const i64 src = tab_src[g], clen = tab_len[g], nout = tab_out[g];
    u8* dst = out + (i64)f * frame_bytes + j * blk_bytes[f];
    const int fid = (int)filt[f];
    int bad = 0;
    if (fid == F_BSLZ4) {
        if (nout > smem_bytes || nout % (8 * itemsize) != 0) {
            bad = 1;
        } else {
            bad = lz4_block(buf + src, clen, smem, nout, 1, lane);
            XR_SYNC();
            if (!bad) {
                const i64 nel = nout / itemsize;
                if (itemsize == 1) unshuffle<1, u8>(smem, nel, dst, lane);
                else if (itemsize == 2) unshuffle<2, u16>(smem, nel, dst, lane);
                else if (itemsize == 4) unshuffle<4, u32>(smem, nel, dst, lane);
                else if (itemsize == 8) unshuffle<8, u64>(smem, nel, dst, lane);
                else bad = 1;
            }
        }
    } else if (fid == F_LZ4 && clen != nout) {
        bad = lz4_block(buf + src, clen, dst, nout, 0, lane);
    } else if (clen == nout) {  // raw: 32004 blocks stored as is, unfiltered chunks
        WARP_FOR(i, 0, nout) dst[i] = buf[src + i];
    } else {
        bad = 1;
    }
    if (bad && lane == 0) xr_atomic_min(&err[f], err_key(j, XR_CORRUPT));
}

XR_DEV void frame_status(int f, const u64* err, int* status) {
    status[f] = err[f] == NO_ERROR ? XR_OK : (int)(err[f] & 0xFF);
}

// ------------------------------------------------------------------------------------------
// entry points: CUDA kernels, or loops over the grid for the C++ build
// ------------------------------------------------------------------------------------------
#define SCAN_ARGS const u8* buf, const i64* beg, const i64* end, const i64* filt, int n, i64 frame_bytes, \
    int itemsize, const i64* tab_off, i64* tab_src, i64* tab_len, i64* tab_out, i64* nblk, i64* blk_bytes, \
    u64* err, u8* out, i64 smem_bytes
#define SCAN_PASS buf, beg, end, filt, frame_bytes, itemsize, tab_off, tab_src, tab_len, tab_out, nblk, \
    blk_bytes, err, out, smem_bytes
#define BLOCK_ARGS const u8* buf, const i64* filt, int n, i64 frame_bytes, int itemsize, const i64* tab_off, \
    const i64* tab_src, const i64* tab_len, const i64* tab_out, const i64* nblk, const i64* blk_bytes, u64* err, \
    u8* out, i64 smem_bytes, i64 nentries
#define BLOCK_PASS buf, filt, n, frame_bytes, itemsize, tab_off, tab_src, tab_len, tab_out, nblk, blk_bytes, err, \
    out, smem_bytes

#ifdef XR_HOST
#include <vector>
extern "C" void h5_scan(SCAN_ARGS) {
    for (int f = n - 1; f >= 0; --f) scan_frame(f, SCAN_PASS);
}
extern "C" void h5_blocks(BLOCK_ARGS) {
    std::vector<u8> smem((std::size_t)smem_bytes + 1);
    for (i64 g = nentries - 1; g >= 0; --g) decode_entry(g, 0, smem.data(), BLOCK_PASS);
}
extern "C" void h5_status(const u64* err, int n, int* status) {
    for (int f = 0; f < n; ++f) frame_status(f, err, status);
}
#else
extern "C" __global__ void h5_scan(SCAN_ARGS) {
    const int f = blockIdx.x * blockDim.x + threadIdx.x;
    if (f < n) scan_frame(f, SCAN_PASS);
}
extern "C" __global__ void __launch_bounds__(32) h5_blocks(BLOCK_ARGS) {
    extern __shared__ u8 smem[];
    const i64 g = (i64)blockIdx.x;
    if (g < nentries) decode_entry(g, (int)threadIdx.x, smem, BLOCK_PASS);
}
extern "C" __global__ void h5_status(const u64* err, int n, int* status) {
    const int f = blockIdx.x * blockDim.x + threadIdx.x;
    if (f < n) frame_status(f, err, status);
}
#endif
