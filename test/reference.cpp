// test/reference.cpp — the CPU references (see reference.h): plain loops in double precision, written to
// be obviously right rather than fast.
#include "reference.h"

#include <algorithm>
#include <cmath>

Vec to_double(const std::vector<float>& x) { return Vec(x.begin(), x.end()); }

std::vector<float> to_float(const Vec& x) {
    std::vector<float> out(x.size());
    for (size_t i = 0; i < x.size(); ++i) out[i] = float(x[i]);
    return out;
}

Vec linear_ref(const Vec& x, const Vec& W, int N, int in, int out) {
    Vec y(size_t(N) * size_t(out), 0.0);
    for (int n = 0; n < N; ++n)
        for (int o = 0; o < out; ++o) {
            double acc = 0;
            for (int i = 0; i < in; ++i) acc += x[size_t(n) * in + i] * W[size_t(o) * in + i];
            y[size_t(n) * out + o] = acc;
        }
    return y;
}

Vec embedding_forward_ref(const std::vector<int32_t>& ids, const Vec& E, int D) {
    Vec h(ids.size() * size_t(D));
    for (size_t n = 0; n < ids.size(); ++n)
        for (int i = 0; i < D; ++i) h[n * D + i] = E[size_t(ids[n]) * D + i];
    return h;
}

Vec rmsnorm_forward_ref(const Vec& x, const Vec& w, int N, int D, double eps, Vec* rstd) {
    Vec y(x.size());
    if (rstd) rstd->assign(size_t(N), 0.0);
    for (int n = 0; n < N; ++n) {
        double ss = 0;
        for (int i = 0; i < D; ++i) ss += x[size_t(n) * D + i] * x[size_t(n) * D + i];
        double r = 1.0 / std::sqrt(ss / D + eps);
        if (rstd) (*rstd)[size_t(n)] = r;
        for (int i = 0; i < D; ++i) y[size_t(n) * D + i] = w[size_t(i)] * x[size_t(n) * D + i] * r;
    }
    return y;
}

void rmsnorm_backward_ref(const Vec& x, const Vec& w, const Vec& dy, int N, int D, double eps, Vec& dx, Vec& dw) {
    dx.assign(x.size(), 0.0);
    dw.assign(size_t(D), 0.0);
    for (int n = 0; n < N; ++n) {
        const double* xr = x.data() + size_t(n) * D;
        const double* dyr = dy.data() + size_t(n) * D;
        double ss = 0, dot = 0;
        for (int i = 0; i < D; ++i) ss += xr[i] * xr[i];
        double r = 1.0 / std::sqrt(ss / D + eps);
        for (int i = 0; i < D; ++i) dot += dyr[i] * w[size_t(i)] * xr[i] * r;
        for (int i = 0; i < D; ++i) {
            dx[size_t(n) * D + i] = r * (dyr[i] * w[size_t(i)] - xr[i] * r * dot / D);
            dw[size_t(i)] += dyr[i] * xr[i] * r;
        }
    }
}

void rope_ref(Vec& x, const std::vector<int32_t>& positions, const std::vector<float>& inv_freq, int N, int nh, int Dh,
              bool inverse) {
    int half = Dh / 2;
    for (int n = 0; n < N; ++n)
        for (int h = 0; h < nh; ++h)
            for (int i = 0; i < half; ++i) {
                double angle = double(positions[size_t(n)]) * double(inv_freq[size_t(i)]) * (inverse ? -1.0 : 1.0);
                double c = std::cos(angle), s = std::sin(angle);
                double& x1 = x[(size_t(n) * nh + h) * Dh + i];
                double& x2 = x[(size_t(n) * nh + h) * Dh + i + half];
                double r1 = x1 * c - x2 * s, r2 = x2 * c + x1 * s;
                x1 = r1, x2 = r2;
            }
}

Vec swiglu_forward_ref(const Vec& g, const Vec& u) {
    Vec act(g.size());
    for (size_t i = 0; i < g.size(); ++i) act[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
    return act;
}

void swiglu_backward_ref(const Vec& g, const Vec& u, const Vec& dact, Vec& dg, Vec& du) {
    dg.resize(g.size()), du.resize(g.size());
    for (size_t i = 0; i < g.size(); ++i) {
        double s = 1.0 / (1.0 + std::exp(-g[i]));
        dg[i] = dact[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
        du[i] = dact[i] * g[i] * s;
    }
}

namespace {

// The attention probabilities of one query row: p[j] for j in [lo, t], and the row's lse.
void attention_row(const AttentionDims& a, const Vec& q, const Vec& k, int b, int t, int h, int lo, Vec& p, double& lse) {
    int g = h / (a.H / a.KVH);
    double scale = 1.0 / std::sqrt(double(a.Dh)), m = -1e300, sum = 0;
    const double* qr = q.data() + ((size_t(b) * a.T + t) * a.H + h) * a.Dh;
    p.assign(size_t(t + 1), 0.0);
    for (int j = lo; j <= t; ++j) {
        const double* kr = k.data() + ((size_t(b) * a.T + j) * a.KVH + g) * a.Dh;
        double s = 0;
        for (int d = 0; d < a.Dh; ++d) s += qr[d] * kr[d];
        p[size_t(j)] = s * scale, m = std::max(m, p[size_t(j)]);
    }
    for (int j = lo; j <= t; ++j) sum += std::exp(p[size_t(j)] - m);
    lse = m + std::log(sum);
    for (int j = lo; j <= t; ++j) p[size_t(j)] = std::exp(p[size_t(j)] - lse);
}

int first_key(const std::vector<int32_t>& doc_start, const AttentionDims& a, int b, int t) {
    return doc_start.empty() ? 0 : doc_start[size_t(b) * a.T + t];
}

}  // namespace

void attention_forward_ref(const AttentionDims& a, const Vec& q, const Vec& k, const Vec& v,
                           const std::vector<int32_t>& doc_start, Vec& o, Vec& lse) {
    o.assign(size_t(a.B) * a.T * a.H * a.Dh, 0.0);
    lse.assign(size_t(a.B) * a.H * a.T, 0.0);
    Vec p;
    for (int b = 0; b < a.B; ++b)
        for (int t = 0; t < a.T; ++t)
            for (int h = 0; h < a.H; ++h) {
                int g = h / (a.H / a.KVH), lo = first_key(doc_start, a, b, t);
                attention_row(a, q, k, b, t, h, lo, p, lse[(size_t(b) * a.H + h) * a.T + t]);
                double* orow = o.data() + ((size_t(b) * a.T + t) * a.H + h) * a.Dh;
                for (int j = lo; j <= t; ++j) {
                    const double* vr = v.data() + ((size_t(b) * a.T + j) * a.KVH + g) * a.Dh;
                    for (int d = 0; d < a.Dh; ++d) orow[d] += p[size_t(j)] * vr[d];
                }
            }
}

void attention_backward_ref(const AttentionDims& a, const Vec& q, const Vec& k, const Vec& v, const Vec& dO,
                            const std::vector<int32_t>& doc_start, Vec& dq, Vec& dk, Vec& dv) {
    dq.assign(q.size(), 0.0), dk.assign(k.size(), 0.0), dv.assign(v.size(), 0.0);
    double scale = 1.0 / std::sqrt(double(a.Dh));
    Vec p, dp;
    for (int b = 0; b < a.B; ++b)
        for (int t = 0; t < a.T; ++t)
            for (int h = 0; h < a.H; ++h) {
                int g = h / (a.H / a.KVH), lo = first_key(doc_start, a, b, t);
                double lse = 0;
                attention_row(a, q, k, b, t, h, lo, p, lse);
                size_t qrow = ((size_t(b) * a.T + t) * a.H + h) * a.Dh;
                // dP_j = dO . v_j;  D = sum_j P_j dP_j (= dO . o);  dS_j = P_j (dP_j - D)
                dp.assign(size_t(t + 1), 0.0);
                double D = 0;
                for (int j = lo; j <= t; ++j) {
                    const double* vr = v.data() + ((size_t(b) * a.T + j) * a.KVH + g) * a.Dh;
                    for (int d = 0; d < a.Dh; ++d) dp[size_t(j)] += dO[qrow + d] * vr[d];
                    D += p[size_t(j)] * dp[size_t(j)];
                }
                for (int j = lo; j <= t; ++j) {
                    size_t krow = ((size_t(b) * a.T + j) * a.KVH + g) * a.Dh;
                    double ds = p[size_t(j)] * (dp[size_t(j)] - D) * scale;
                    for (int d = 0; d < a.Dh; ++d) {
                        dv[krow + d] += p[size_t(j)] * dO[qrow + d];
                        dq[qrow + d] += ds * k[krow + d];
                        dk[krow + d] += ds * q[qrow + d];
                    }
                }
            }
}

double cross_entropy_ref(const Vec& z, const std::vector<int32_t>& targets, int rows, int V, double inv_divisor, Vec* dz) {
    double total = 0;
    if (dz) dz->assign(size_t(rows) * V, 0.0);
    for (int r = 0; r < rows; ++r) {
        int t = targets[size_t(r)];
        if (t < 0) continue;
        const double* zr = z.data() + size_t(r) * V;
        double m = -1e300, sum = 0;
        for (int j = 0; j < V; ++j) m = std::max(m, zr[j]);
        for (int j = 0; j < V; ++j) sum += std::exp(zr[j] - m);
        double lse = m + std::log(sum);
        total += lse - zr[t];
        if (dz)
            for (int j = 0; j < V; ++j) (*dz)[size_t(r) * V + j] = (std::exp(zr[j] - lse) - (j == t ? 1.0 : 0.0)) * inv_divisor;
    }
    return total;
}
