// Batched CBF byte-offset decoding: many frames per launch, one thread per chunk of bytes.
//
// Format: each pixel is a delta to the previous one: one signed byte, or 0x80 then int16, or
// 0x80 0x8000 then int32, or 0x80 0x8000 0x80000000 then int64 (little endian).  Token lengths
// are 1, 3, 7 or 15 bytes, and every escaped token starts with the byte 0x80.
//
// Parallel decoding rests on one observation: byte p is certainly the start of a token when no
// byte 0x80 occurs in the 14 bytes before it (a token covering p would have to start there with
// 0x80).  So every chunk of CHUNK bytes begins at its first such "safe" byte, and a thread decodes
// from its safe start to the next chunk's safe start: both lie on the true token chain, so the
// chain from one lands exactly on the other.  Where 0x80 bytes are dense a chunk may have no safe
// byte; its thread then does nothing and the previous thread walks on (slower, still exact).
//
// Pass 1 counts tokens and sums deltas per chunk; exclusive scans (cupy.cumsum) give each chunk
// its first pixel index and start value; pass 2 decodes again and writes pixels.  Frame f's
// payload is buf[begin[f]:end[f]] (anywhere in the buffer: e.g. inside the file image read
// straight into pinned memory); its chunks are numbered first_chunk[f] .. first_chunk[f+1]-1.  Reads never leave
// [begin[f], end[f]); a frame whose payload holds fewer than npix complete tokens is flagged.

#define MAX_TOKEN 15

__device__ __forceinline__ int frame_of(const long long* first_chunk, int nframes, long long g) {
    // largest f with first_chunk[f] <= g (first_chunk: nframes + 1 sorted chunk counts' prefix sums)
    int lo = 0, hi = nframes;
    while (hi - lo > 1) {
        int mid = (lo + hi) >> 1;
        if (first_chunk[mid] <= g) lo = mid; else hi = mid;
    }
    return lo;
}

__device__ __forceinline__ long long safe_start(const unsigned char* buf, long long b, long long e, long long p) {
    // first p' >= p (p' <= e) with no 0x80 in [max(b, p'-14), p'-1]; the frame start b is safe
    if (p <= b) return b;
    if (p >= e) return e;
    long long last = -1;
    long long q0 = p - (MAX_TOKEN - 1) > b ? p - (MAX_TOKEN - 1) : b;
    for (long long q = q0; q < p; ++q)
        if (buf[q] == 0x80) last = q;
    while (p < e && last >= 0 && last >= p - (MAX_TOKEN - 1)) {
        if (buf[p] == 0x80) last = p;
        ++p;
    }
    return p;
}

// Decode one token at p (p < e).  Returns its length, 0 if it is incomplete before e.
__device__ __forceinline__ int token(const unsigned char* buf, long long p, long long e, long long* delta) {
    int d8 = (signed char)buf[p];
    if (d8 != -128) { *delta = d8; return 1; }
    if (p + 3 > e) return 0;
    int d16 = (short)(buf[p + 1] | (buf[p + 2] << 8));
    if (d16 != -32768) { *delta = d16; return 3; }
    if (p + 7 > e) return 0;
    int d32 = (int)((unsigned)buf[p + 3] | ((unsigned)buf[p + 4] << 8) | ((unsigned)buf[p + 5] << 16) |
                    ((unsigned)buf[p + 6] << 24));
    if (d32 != (int)0x80000000) { *delta = d32; return 7; }
    if (p + 15 > e) return 0;
    unsigned long long d64 = 0;
    for (int k = 0; k < 8; ++k) d64 |= (unsigned long long)buf[p + 7 + k] << (8 * k);
    *delta = (long long)d64;
    return 15;
}

__device__ __forceinline__ void segment(const unsigned char* buf, const long long* begin, const long long* end,
                                        const long long* first_chunk, int nframes, int chunk, long long g,
                                        int* f_out, long long* s, long long* t, long long* e_out) {
    int f = frame_of(first_chunk, nframes, g);
    long long b = begin[f], e = end[f];
    long long pos = b + (g - first_chunk[f]) * (long long)chunk;
    *f_out = f;
    *e_out = e;
    if (pos >= e) { *s = *t = e; return; }
    *s = safe_start(buf, b, e, pos);
    long long next = pos + chunk;
    *t = next >= e ? e : safe_start(buf, b, e, next);
}

extern "C" __global__ void bo_count(const unsigned char* buf, const long long* begin, const long long* end,
                                    const long long* first_chunk, int nframes, int chunk, long long nchunks,
                                    long long* tok_count, unsigned long long* delta_sum) {
    long long g = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (g >= nchunks) return;
    int f;
    long long s, t, e;
    segment(buf, begin, end, first_chunk, nframes, chunk, g, &f, &s, &t, &e);
    long long n = 0;
    unsigned long long acc = 0;
    long long p = s;
    while (p < t) {
        long long d;
        int len = token(buf, p, e, &d);
        if (len == 0) break;  // incomplete last token: not counted
        acc += (unsigned long long)d;
        ++n;
        p += len;
    }
    tok_count[g] = n;
    delta_sum[g] = acc;
}

// tok_base / val_base: exclusive prefix sums of tok_count / delta_sum over all chunks.
extern "C" __global__ void bo_write(const unsigned char* buf, const long long* begin, const long long* end,
                                    const long long* first_chunk, int nframes, int chunk, long long nchunks,
                                    const long long* tok_base, const unsigned long long* val_base,
                                    const long long* out_off, int* out) {
    long long g = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (g >= nchunks) return;
    int f;
    long long s, t, e;
    segment(buf, begin, end, first_chunk, nframes, chunk, g, &f, &s, &t, &e);
    if (s >= t) return;
    long long first = first_chunk[f];
    long long idx = tok_base[g] - tok_base[first];
    unsigned long long val = val_base[g] - val_base[first];
    long long npix = out_off[f + 1] - out_off[f];
    int* dst = out + out_off[f];
    long long p = s;
    while (p < t && idx < npix) {
        long long d;
        int len = token(buf, p, e, &d);
        if (len == 0) break;
        val += (unsigned long long)d;
        dst[idx++] = (int)(unsigned int)(val & 0xFFFFFFFFull);  // modulo 2**32, as CBFlib
        p += len;
    }
}

// status[f] = 1 when frame f holds fewer than npix complete tokens (truncated / corrupt), else 0.
extern "C" __global__ void bo_status(const long long* first_chunk, int nframes, const long long* tok_base,
                                     const long long* tok_count, const long long* out_off, int* status) {
    int f = blockIdx.x * blockDim.x + threadIdx.x;
    if (f >= nframes) return;
    long long first = first_chunk[f];
    long long total;
    if (first_chunk[f + 1] <= first) {
        total = 0;
    } else {
        long long last = first_chunk[f + 1] - 1;
        total = tok_base[last] + tok_count[last] - tok_base[first];
    }
    status[f] = total < (out_off[f + 1] - out_off[f]) ? 1 : 0;
}

// Pass 2 with coalesced stores: the threads of a block decode into a shared-memory stage that
// covers the block's contiguous range of output positions, then the block copies the stage to
// global memory with consecutive threads writing consecutive words.  Output positions of written
// pixels increase with the chunk index, so the ranges of two blocks never interleave; positions
// beyond the stage's capacity are written directly.  (Positions inside the range that no thread
// wrote exist only in truncated frames, whose pixels are undefined anyway.)
extern "C" __global__ void bo_write_staged(const unsigned char* buf, const long long* begin, const long long* end,
                                           const long long* first_chunk, int nframes, int chunk,
                                           long long nchunks, const long long* tok_base,
                                           const unsigned long long* val_base, const long long* out_off,
                                           int* out, int stage_words) {
    extern __shared__ int stage[];
    __shared__ unsigned long long lo_sh;
    __shared__ unsigned long long hi_sh;
    if (threadIdx.x == 0) { lo_sh = ~0ull; hi_sh = 0ull; }
    __syncthreads();
    long long g = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    int f = 0;
    long long s = 0, t = 0, e = 0, idx = 0, npix = 0, base = 0;
    unsigned long long val = 0;
    if (g < nchunks) {
        segment(buf, begin, end, first_chunk, nframes, chunk, g, &f, &s, &t, &e);
        long long first = first_chunk[f];
        idx = tok_base[g] - tok_base[first];
        val = val_base[g] - val_base[first];
        npix = out_off[f + 1] - out_off[f];
        base = out_off[f];
        if (s < t && idx < npix) atomicMin(&lo_sh, (unsigned long long)(base + idx));
    }
    __syncthreads();
    long long lo = (long long)lo_sh;
    long long p = s, last = -1;
    while (p < t && idx < npix) {
        long long d;
        int len = token(buf, p, e, &d);
        if (len == 0) break;
        val += (unsigned long long)d;
        long long pos = base + idx++;
        int word = (int)(unsigned int)(val & 0xFFFFFFFFull);
        if (pos - lo < stage_words) stage[pos - lo] = word; else out[pos] = word;
        last = pos;
        p += len;
    }
    if (last >= 0) atomicMax(&hi_sh, (unsigned long long)(last + 1));
    __syncthreads();
    if (lo_sh == ~0ull) return;
    long long n = (long long)hi_sh - lo;
    if (n > stage_words) n = stage_words;
    for (long long k = threadIdx.x; k < n; k += blockDim.x) out[lo + k] = stage[k];
}
