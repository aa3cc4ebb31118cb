// Batched CSR integration of frames (int32 counts or float32) on the device.
//
// Frames are first transposed to pixel-major (npix, n): then one thread per (matrix row chunk,
// frame f), a warp holding 32 frames of the same chunk, reads for each matrix entry (c, col) --
// broadcast to the warp -- the 32 frames' values of pixel col as one coalesced 128-byte line.
// Sums are kept in double precision in registers (the Poisson kernel adds groups of 8 entries'
// float32 products to them) and written once:
//
//   out[0] signal   sum c * raw              (dark is removed with the plan's static sums)
//   out[1] variance sum c^2 * max(raw, 1)   (Poisson, pyFAI's Cython preproc)
//   out[2..5] over pixels invalid in this frame only (raw < 0): sum c, c*n, (c*n)^2, c*dark
//
// Static-masked pixels are not in the matrix.  Layout of out: (6, nframes, nbins).

// (n, npix) -> (npix, n) for 4-byte words through shared memory, both sides coalesced.  A block
// (32 x 8 threads) moves a tile of 32 frames x 32*TW pixels; frame f of the input starts at word
// f * stride (stride >= npix: rows padded to whole 128-byte lines read in fewer memory sectors).
template <int TW>
__device__ __forceinline__ void transpose_tile(const unsigned int* __restrict__ in, unsigned int* __restrict__ out,
                                               int n, long long npix, long long stride) {
    __shared__ unsigned int tile[32][32 * TW + 1];
    long long p0 = (long long)blockIdx.x * 32 * TW;
    int f0 = blockIdx.y * 32;
#pragma unroll
    for (int k = threadIdx.y; k < 32; k += 8) {
        int f = f0 + k;
#pragma unroll
        for (int w = 0; w < TW; ++w) {
            long long p = p0 + w * 32 + threadIdx.x;
            if (f < n && p < npix) tile[k][w * 32 + threadIdx.x] = in[(long long)f * stride + p];
        }
    }
    __syncthreads();
#pragma unroll
    for (int k = threadIdx.y; k < 32 * TW; k += 8) {
        long long p = p0 + k;
        int f = f0 + threadIdx.x;
        if (f < n && p < npix) out[p * n + f] = tile[threadIdx.x][k];
    }
}

#define TRANSPOSE(TW)                                                                                          \
    extern "C" __global__ void transpose32x##TW(const unsigned int* __restrict__ in,                          \
                                                unsigned int* __restrict__ out, int n, long long npix,         \
                                                long long stride) {                                            \
        transpose_tile<TW>(in, out, n, npix, stride);                                                          \
    }
TRANSPOSE(1)
TRANSPOSE(2)
TRANSPOSE(4)

#ifndef FPT
#define FPT 2  // frames per thread of the Poisson kernel (compile-time: the accumulators stay in registers)
#endif

// Frames are int32 counts or float32 (NaN = invalid); a pixel is valid when raw >= 0.
__device__ __forceinline__ bool valid(int r) { return r >= 0; }
__device__ __forceinline__ bool valid(float r) { return r >= 0.0f && isfinite(r); }  // false for NaN, inf

template <typename T>
__device__ __forceinline__ void accumulate(float cf, T r, int col, const float* __restrict__ norm,
                                           const float* __restrict__ dark, int has_dark, int do_var, double& s,
                                           double& v, double& bc, double& bcn, double& bc2n2, double& bcd) {
    double c = (double)cf;
    if (valid(r)) {
        double rd = (double)r;
        s += c * rd;
        if (do_var) v += c * c * (rd > 1.0 ? rd : 1.0);
    } else {  // invalid in this frame only: remove its share from the static sums
        double n = (double)norm[col];
        bc += c;
        bcn += c * n;
        bc2n2 += c * c * n * n;
        if (has_dark) bcd += c * (double)dark[col];
    }
}

// The Poisson kernel works on row chunks, not rows: a row (radial bin) of the full-splitting
// matrix holds 0 to ~2x the mean number of entries, so one warp per row leaves the GPU half idle
// behind the longest rows.  Chunk c covers entries [lo[c], hi[c]) of one row (at most a fixed
// number); warp (c, frame group) writes its partial sums to part (6, nchunks, ld_part), and
// csr_reduce adds a row's chunks in a fixed order (deterministic, no atomics).
//
// FPT frames per thread (f, f + 32, ...): the entry's index and coefficient are loaded once for
// all of them, and FPT coalesced pixel lines per entry are in flight.  Frames are pixel-major with
// row stride ld (frames of this launch: nframes, starting at the given pointer).
template <typename T, int NF>
__device__ void poisson_impl(const float* __restrict__ data, const int* __restrict__ indices,
                             const int* __restrict__ lo, const int* __restrict__ hi, int nchunks,
                             const T* __restrict__ frames, long long ld, int nframes, const float* __restrict__ norm,
                             const float* __restrict__ dark, int has_dark, int do_var, double* __restrict__ part) {
    int c = blockIdx.x * blockDim.y + threadIdx.y;
    int f0 = blockIdx.y * (32 * NF) + threadIdx.x;
    if (c >= nchunks || f0 >= nframes) return;
    double s[NF], v[NF], bc[NF], bcn[NF], bc2n2[NF], bcd[NF];
    bool on[NF];
#pragma unroll
    for (int k = 0; k < NF; ++k) {
        s[k] = v[k] = bc[k] = bcn[k] = bc2n2[k] = bcd[k] = 0.0;
        on[k] = f0 + 32 * k < nframes;
    }
    int j = lo[c], j1 = hi[c];
    const int U = 8;  // U entries at a time: index, coefficient and pixel loads in flight together
    for (; j + U <= j1; j += U) {
        int cols[U];
        float cs[U];
#pragma unroll
        for (int u = 0; u < U; ++u) { cols[u] = indices[j + u]; cs[u] = data[j + u]; }
        T rs[U][NF];
#pragma unroll
        for (int u = 0; u < U; ++u)
#pragma unroll
            for (int k = 0; k < NF; ++k)
                rs[u][k] = on[k] ? frames[(long long)cols[u] * ld + f0 + 32 * k] : (T)0;
#ifndef F64SUMS  // the U entries' valid terms summed in float32 (relative error <= U * 2^-24), then added in double
#pragma unroll
        for (int k = 0; k < NF; ++k) {
            float sf = 0.0f, vf = 0.0f;
#pragma unroll
            for (int u = 0; u < U; ++u) {
                if (valid(rs[u][k])) {
                    float rf = (float)rs[u][k];
                    sf += cs[u] * rf;
                    vf += cs[u] * cs[u] * fmaxf(rf, 1.0f);
                } else {
                    double dummy_s = 0.0, dummy_v = 0.0;
                    accumulate(cs[u], rs[u][k], cols[u], norm, dark, has_dark, 0, dummy_s, dummy_v, bc[k], bcn[k],
                               bc2n2[k], bcd[k]);
                }
            }
            s[k] += (double)sf;
            if (do_var) v[k] += (double)vf;
        }
#else
#pragma unroll
        for (int u = 0; u < U; ++u)
#pragma unroll
            for (int k = 0; k < NF; ++k)
                accumulate(cs[u], rs[u][k], cols[u], norm, dark, has_dark, do_var, s[k], v[k], bc[k], bcn[k],
                           bc2n2[k], bcd[k]);
#endif
    }
    for (; j < j1; ++j) {
        int col = indices[j];
        float cf = data[j];
#pragma unroll
        for (int k = 0; k < NF; ++k) {
            T r = on[k] ? frames[(long long)col * ld + f0 + 32 * k] : (T)0;
            accumulate(cf, r, col, norm, dark, has_dark, do_var, s[k], v[k], bc[k], bcn[k], bc2n2[k], bcd[k]);
        }
    }
    size_t st = (size_t)nchunks * nframes;
#pragma unroll
    for (int k = 0; k < NF; ++k) {
        if (!on[k]) continue;
        size_t o = (size_t)c * nframes + f0 + 32 * k;
        part[o] = s[k];
        part[st + o] = v[k];
        part[2 * st + o] = bc[k];
        part[3 * st + o] = bcn[k];
        part[4 * st + o] = bc2n2[k];
        part[5 * st + o] = bcd[k];
    }
}

extern "C" __global__ void csr_poisson_i32(const float* data, const int* indices, const int* lo, const int* hi,
                                           int nchunks, const int* frames, long long ld, int nframes,
                                           const float* norm, const float* dark, int has_dark, int do_var,
                                           double* part) {
    poisson_impl<int, FPT>(data, indices, lo, hi, nchunks, frames, ld, nframes, norm, dark, has_dark, do_var, part);
}

extern "C" __global__ void csr_poisson_f32(const float* data, const int* indices, const int* lo, const int* hi,
                                           int nchunks, const float* frames, long long ld, int nframes,
                                           const float* norm, const float* dark, int has_dark, int do_var,
                                           double* part) {
    poisson_impl<float, FPT>(data, indices, lo, hi, nchunks, frames, ld, nframes, norm, dark, has_dark, do_var, part);
}

// out[k, f0 + f, q] = sum over the chunks of row q (row_chunk[q] .. row_chunk[q+1]) of
// part[k, chunk, f], k < 6, in chunk order.  part: (6, nchunks, nframes); out: (6, ntotal, nbins).
// Threads: x over frames (coalesced reads of part), y over rows.
extern "C" __global__ void csr_reduce(const double* __restrict__ part, const int* __restrict__ row_chunk, int nbins,
                                      int nchunks, int nframes, int f0, int ntotal, double* __restrict__ out) {
    int f = blockIdx.x * blockDim.x + threadIdx.x;
    int q = blockIdx.y * blockDim.y + threadIdx.y;
    if (f >= nframes || q >= nbins) return;
    int c0 = row_chunk[q], c1 = row_chunk[q + 1];
    size_t st = (size_t)nchunks * nframes;
    for (int k = 0; k < 6; ++k) {
        double acc = 0.0;
        for (int c = c0; c < c1; ++c) acc += part[k * st + (size_t)c * nframes + f];
        out[((size_t)k * ntotal + f0 + f) * nbins + q] = acc;
    }
}

#define MAX_ITER 32

// One pass over bin q of frame f: sums over valid entries not rejected by any previous
// sigma-clip iteration (history of mean and limit).  Azimuthal variance follows pyFAI's one-pass
// weighted update  VV += w_b^2 (b - <A>)(b - <A u b>)  with w = c * norm, in CSR order.
template <typename T>
__device__ void bin_pass(const float* __restrict__ data, const int* __restrict__ indices, int j0, int j1,
                         const T* __restrict__ fr, int nframes, const float* __restrict__ norm,
                         const float* __restrict__ dark, int has_dark, int azimuthal,
                         const double* h_avg, const double* h_lim, int nh,
                         double* sg, double* vr, double* nm, double* n2, double* ct) {
    double acc_s = 0.0, acc_v = 0.0, acc_n = 0.0, acc_n2 = 0.0, acc_c = 0.0;
    for (int j = j0; j < j1; ++j) {
        int col = indices[j];
        T r = fr[(long long)col * nframes];
        double nrm = (double)norm[col];
        if (!valid(r) || nrm == 0.0) continue;
        double rd = (double)r;
        double s = rd - (has_dark ? (double)dark[col] : 0.0);
        double x = s / nrm;
        bool dropped = false;
        for (int k = 0; k < nh; ++k) dropped |= fabs(x - h_avg[k]) > h_lim[k];
        if (dropped) continue;
        double c = (double)data[j];
        double w = c * nrm;
        if (azimuthal) {
            if (acc_n2 <= 0.0) {
                acc_s = c * s;
                acc_n = w;
                acc_n2 = w * w;
            } else {
                double d1 = acc_s / acc_n - x;
                acc_s += c * s;
                acc_n += w;
                acc_n2 += w * w;
                double d2 = acc_s / acc_n - x;
                acc_v += w * w * d1 * d2;
            }
        } else {
            acc_s += c * s;
            acc_v += c * c * (rd > 1.0 ? rd : 1.0);
            acc_n += w;
            acc_n2 += w * w;
        }
        acc_c += c;
    }
    *sg = acc_s; *vr = acc_v; *nm = acc_n; *n2 = acc_n2; *ct = acc_c;
}

// Azimuthal error model and/or sigma-clipping (pyFAI sigma_clip_ng semantics, per bin):
// entries with |s/n - <I>| > max(thres, chauvenet(N)) * std are dropped, up to `cycles` times.
// out: (5, nframes, nbins) = signal (dark removed), variance, normalization, count, norm_sq.
template <typename T>
__device__ void clip_impl(const float* __restrict__ data, const int* __restrict__ indices,
                          const int* __restrict__ indptr, int nbins, const T* __restrict__ frames,
                          long long npix, int nframes, const float* __restrict__ norm,
                          const float* __restrict__ dark, int has_dark, int azimuthal, double thres,
                          int cycles, double* __restrict__ out) {
    int q = blockIdx.x * blockDim.y + threadIdx.y;
    int f = blockIdx.y * blockDim.x + threadIdx.x;
    if (q >= nbins || f >= nframes) return;
    const T* fr = frames + f;
    int j0 = indptr[q], j1 = indptr[q + 1];
    double h_avg[MAX_ITER], h_lim[MAX_ITER];
    int nh = 0;
    double sg, vr, nm, n2, ct;
    bin_pass<T>(data, indices, j0, j1, fr, nframes, norm, dark, has_dark, azimuthal, h_avg, h_lim, nh, &sg, &vr, &nm, &n2, &ct);
    cycles = cycles < MAX_ITER ? cycles : MAX_ITER;
    for (int it = 0; it < cycles; ++it) {
        if (nm == 0.0 || ct == 0.0 || n2 <= 0.0) break;
        double aver = sg / nm;
        double sd = sqrt(vr / n2);
        double chauv = sqrt(2.0 * log(fmax(3.0, ct) / sqrt(2.0 * 3.141592653589793)));
        double lim = fmax(thres, chauv) * sd;
        int nbad = 0;
        for (int j = j0; j < j1; ++j) {
            int col = indices[j];
            T r = fr[(long long)col * nframes];
            double nrm = (double)norm[col];
            if (!valid(r) || nrm == 0.0) continue;
            double x = ((double)r - (has_dark ? (double)dark[col] : 0.0)) / nrm;
            bool dropped = false;
            for (int k = 0; k < nh; ++k) dropped |= fabs(x - h_avg[k]) > h_lim[k];
            if (!dropped && fabs(x - aver) > lim) ++nbad;
        }
        if (nbad == 0) break;
        h_avg[nh] = aver;
        h_lim[nh] = lim;
        ++nh;
        bin_pass<T>(data, indices, j0, j1, fr, nframes, norm, dark, has_dark, azimuthal, h_avg, h_lim, nh, &sg, &vr, &nm, &n2, &ct);
    }
    size_t o = (size_t)f * nbins + q, st = (size_t)nframes * nbins;
    out[o] = sg;
    out[st + o] = vr;
    out[2 * st + o] = nm;
    out[3 * st + o] = ct;
    out[4 * st + o] = n2;
}

extern "C" __global__ void csr_clip_i32(const float* data, const int* indices, const int* indptr, int nbins,
                                        const int* frames, long long npix, int nframes, const float* norm,
                                        const float* dark, int has_dark, int azimuthal, double thres, int cycles,
                                        double* out) {
    clip_impl<int>(data, indices, indptr, nbins, frames, npix, nframes, norm, dark, has_dark, azimuthal, thres,
                   cycles, out);
}

extern "C" __global__ void csr_clip_f32(const float* data, const int* indices, const int* indptr, int nbins,
                                        const float* frames, long long npix, int nframes, const float* norm,
                                        const float* dark, int has_dark, int azimuthal, double thres, int cycles,
                                        double* out) {
    clip_impl<float>(data, indices, indptr, nbins, frames, npix, nframes, norm, dark, has_dark, azimuthal, thres,
                     cycles, out);
}
