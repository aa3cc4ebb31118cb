// Projector pair of xrdct_dask.recon on the GPU, batched over q (q is the contiguous axis).
//
// Geometry (skimage iradon, as xrdct_dask/recon/_numba.py): image pixel (i, j) of an n x n grid,
// r = n / 2, at angle a samples the detector at
//     pos = (axis - (i - r) sin a) + (j - r) cos a          (detector pixels)
// with linear interpolation between bins floor(pos) and floor(pos) + 1; samples outside
// [0, nd - 1] are 0 and pixels outside the inscribed circle (i-r)^2 + (j-r)^2 > r^2 are 0.
// Positions are computed in double (like the CPU twin) so both pick the same bins and weights.
//
// backproject_linear: thread = one q lane x BP_PIX_PER_THREAD consecutive pixels of a row; the 32
//   lanes of a warp read 128 contiguous bytes of the same detector bin (coalesced), the warps of
//   a block cover neighbouring pixels, so the bins of one angle are shared through L1/L2.
// project_linear: the exact adjoint (pixel-driven splatting); thread = one (angle, q lane) that
//   owns out[a, :, q], so there are no atomics and the sums are deterministic.

#ifndef BP_PIX_PER_THREAD
#define BP_PIX_PER_THREAD 4
#endif

extern "C" __global__ void backproject_linear(
    const float* __restrict__ f,      // (nang, nd, nqc) filtered sinogram chunk
    const double* __restrict__ cs,    // (nang, 2): cos, sin of each angle
    const int nang, const int nd, const int nqc, const int n,
    const double axis_idx, const float scale,
    float* __restrict__ out,          // (n, n, out_nq); this call writes q in [q0, q0 + nqc)
    const long long out_nq, const int q0)
{
    const int q = blockIdx.y * blockDim.x + threadIdx.x;
    const int groups_per_row = (n + BP_PIX_PER_THREAD - 1) / BP_PIX_PER_THREAD;
    const long long g = (long long)blockIdx.x * blockDim.y + threadIdx.y;
    if (q >= nqc || g >= (long long)n * groups_per_row) {
        return;  // no shared memory, no barriers: early exit is safe
    }
    const int i = (int)(g / groups_per_row);
    const int j0 = (int)(g % groups_per_row) * BP_PIX_PER_THREAD;
    const int r = n / 2;
    const int xpr = i - r;
    const double hi = (double)(nd - 1);

    bool inside[BP_PIX_PER_THREAD];
    float acc[BP_PIX_PER_THREAD];
#pragma unroll
    for (int k = 0; k < BP_PIX_PER_THREAD; ++k) {
        const int ypr = j0 + k - r;
        inside[k] = (j0 + k < n) && (xpr * xpr + ypr * ypr <= r * r);
        acc[k] = 0.0f;
    }
    const float* fq = f + q;
    for (int a = 0; a < nang; ++a) {
        const double c = cs[2 * a];
        const double s = cs[2 * a + 1];
        const double base = axis_idx - (double)xpr * s;
        const float* fa = fq + (size_t)a * nd * nqc;
#pragma unroll
        for (int k = 0; k < BP_PIX_PER_THREAD; ++k) {
            const double pos = base + (double)(j0 + k - r) * c;
            if (inside[k] && pos >= 0.0 && pos <= hi) {
                int i0 = (int)pos;
                if (i0 > nd - 2) {
                    i0 = nd - 2;
                }
                const float w = (float)(pos - (double)i0);
                const float f0 = __ldg(fa + (size_t)i0 * nqc);
                const float f1 = __ldg(fa + (size_t)(i0 + 1) * nqc);
                acc[k] += f0 + w * (f1 - f0);
            }
        }
    }
#pragma unroll
    for (int k = 0; k < BP_PIX_PER_THREAD; ++k) {
        const int j = j0 + k;
        if (j < n) {
            out[((size_t)i * n + j) * out_nq + q0 + q] = inside[k] ? acc[k] * scale : 0.0f;
        }
    }
}

extern "C" __global__ void project_linear(
    const float* __restrict__ img,    // (n, n, nq)
    const double* __restrict__ cs,    // (nang, 2): cos, sin of each angle
    const int nang, const int nd, const int nq, const int n,
    const double axis_idx,
    float* __restrict__ out)          // (nang, nd, nq), zeroed by the caller
{
    const int q = blockIdx.x * blockDim.x + threadIdx.x;
    const int a = blockIdx.y * blockDim.y + threadIdx.y;
    if (q >= nq || a >= nang) {
        return;
    }
    const double c = cs[2 * a];
    const double s = cs[2 * a + 1];
    const int r = n / 2;
    const double hi = (double)(nd - 1);
    float* oa = out + (size_t)a * nd * nq + q;
    for (int i = 0; i < n; ++i) {
        const int xpr = i - r;
        const double base = axis_idx - (double)xpr * s;
        // along a row the bin changes every 1/|cos| pixels: sum in registers, flush on change
        int cur = -1;
        float s0 = 0.0f, s1 = 0.0f;
        for (int j = 0; j < n; ++j) {
            const int ypr = j - r;
            if (xpr * xpr + ypr * ypr > r * r) {
                continue;
            }
            const double pos = base + (double)ypr * c;
            if (pos < 0.0 || pos > hi) {
                continue;
            }
            int i0 = (int)pos;
            if (i0 > nd - 2) {
                i0 = nd - 2;
            }
            if (i0 != cur) {
                if (cur >= 0) {
                    oa[(size_t)cur * nq] += s0;
                    oa[(size_t)(cur + 1) * nq] += s1;
                }
                cur = i0;
                s0 = 0.0f;
                s1 = 0.0f;
            }
            const float w = (float)(pos - (double)i0);
            const float v = img[((size_t)i * n + j) * nq + q];
            s0 += v - w * v;
            s1 += w * v;
        }
        if (cur >= 0) {
            oa[(size_t)cur * nq] += s0;
            oa[(size_t)(cur + 1) * nq] += s1;
        }
    }
}
