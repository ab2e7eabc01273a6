import java.lang.invoke.MethodHandles;
import java.lang.invoke.VarHandle;
import java.nio.ByteOrder;

/**
 * XXH3-128 (seed 0, default secret), as xxhash's reference: used to name decisions like threatflow's decision_id.
 *
 * <p>A straight port of the 128-bit XXH3 of the reference xxHash library (xxhash.h, v0.8.x,
 * BSD-2-Clause, Copyright (C) 2012-2023 Yann Collet), restricted to seed 0 and the default
 * 192-byte secret. It exists so the Java/Flink experiment computes exactly the same ids as
 * Rust's {@code xxhash_rust::xxh3::xxh3_128(bytes)} and Python's {@code xxhash.xxh3_128_intdigest(bytes)}
 * without pulling in a dependency. All arithmetic is wrapping 64-bit; reads are little-endian.
 */
final class Xxh3 {
    private Xxh3() {}

    private static final VarHandle LE64 = MethodHandles.byteArrayViewVarHandle(long[].class, ByteOrder.LITTLE_ENDIAN);
    private static final VarHandle LE32 = MethodHandles.byteArrayViewVarHandle(int[].class, ByteOrder.LITTLE_ENDIAN);

    private static final long P32_1 = 0x9E3779B1L, P32_2 = 0x85EBCA77L, P32_3 = 0xC2B2AE3DL;
    private static final long P64_1 = 0x9E3779B185EBCA87L, P64_2 = 0xC2B2AE3D27D4EB4FL, P64_3 = 0x165667B19E3779F9L,
            P64_4 = 0x85EBCA77C2B2AE63L, P64_5 = 0x27D4EB2F165667C5L;
    private static final long PRIME_MX1 = 0x165667919E3779F9L, PRIME_MX2 = 0x9FB21C651E98DF25L;

    private static final int STRIPE_LEN = 64, SECRET_CONSUME_RATE = 8, ACC_NB = 8;
    private static final int MIDSIZE_STARTOFFSET = 3, MIDSIZE_LASTOFFSET = 17, SECRET_SIZE_MIN = 136;
    private static final int SECRET_LASTACC_START = 7, SECRET_MERGEACCS_START = 11;

    /** XXH3_kSecret: the default 192-byte secret. */
    private static final byte[] SECRET = bytes(
            0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c,
            0xde, 0xd4, 0x6d, 0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f,
            0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff, 0x72, 0x21,
            0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43, 0x24, 0x8e, 0xe0, 0x35, 0x90, 0xe6, 0x81, 0x3a, 0x26, 0x4c,
            0x3c, 0x28, 0x52, 0xbb, 0x91, 0xc3, 0x00, 0xcb, 0x88, 0xd0, 0x65, 0x8b, 0x1b, 0x53, 0x2e, 0xa3,
            0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19, 0xef, 0x46, 0xa9, 0xde, 0xac, 0xd8,
            0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f, 0xf9, 0xdc, 0xbb, 0xc7, 0xc7, 0x0b, 0x4f, 0x1d,
            0x8a, 0x51, 0xe0, 0x4b, 0xcd, 0xb4, 0x59, 0x31, 0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78, 0x73, 0x64,
            0xea, 0xc5, 0xac, 0x83, 0x34, 0xd3, 0xeb, 0xc3, 0xc5, 0x81, 0xa0, 0xff, 0xfa, 0x13, 0x63, 0xeb,
            0x17, 0x0d, 0xdd, 0x51, 0xb7, 0xf0, 0xda, 0x49, 0xd3, 0x16, 0x55, 0x26, 0x29, 0xd4, 0x68, 0x9e,
            0x2b, 0x16, 0xbe, 0x58, 0x7d, 0x47, 0xa1, 0xfc, 0x8f, 0xf8, 0xb8, 0xd1, 0x7a, 0xd0, 0x31, 0xce,
            0x45, 0xcb, 0x3a, 0x8f, 0x95, 0x16, 0x04, 0x28, 0xaf, 0xd7, 0xfb, 0xca, 0xbb, 0x4b, 0x40, 0x7e);

    /** The 128-bit hash as {low64, high64}. */
    static long[] hash128(byte[] input) {
        int len = input.length;
        if (len <= 16) return len0to16(input, len);
        if (len <= 128) return len17to128(input, len);
        if (len <= 240) return len129to240(input, len);
        return hashLong(input, len);
    }

    /** Lowercase 32-digit hex of the 128-bit value, high 64 bits first (the same text as Rust's `format!("{:032x}", xxh3_128(bytes))`). */
    static String hex128(byte[] input) {
        long[] h = hash128(input);
        return String.format("%016x%016x", h[1], h[0]);
    }

    // ---- helpers -------------------------------------------------------------------------

    private static byte[] bytes(int... v) {
        byte[] b = new byte[v.length];
        for (int i = 0; i < v.length; i++) b[i] = (byte) v[i];
        return b;
    }

    private static long r64(byte[] b, int i) { return (long) LE64.get(b, i); }

    private static long r32(byte[] b, int i) { return (int) LE32.get(b, i) & 0xFFFFFFFFL; }

    /** High 64 bits of the unsigned 64x64 product (Java 17 has only the signed multiplyHigh). */
    private static long mulHi(long a, long b) {
        return Math.multiplyHigh(a, b) + ((a >> 63) & b) + ((b >> 63) & a);
    }

    /** XXH3_mul128_fold64: low ^ high of the 128-bit product. */
    private static long fold64(long a, long b) { return (a * b) ^ mulHi(a, b); }

    private static long xxh64Avalanche(long h) {
        h ^= h >>> 33; h *= P64_2;
        h ^= h >>> 29; h *= P64_3;
        return h ^ (h >>> 32);
    }

    private static long avalanche(long h) {
        h ^= h >>> 37; h *= PRIME_MX1;
        return h ^ (h >>> 32);
    }

    private static long mix16B(byte[] in, int i, int s) {
        return fold64(r64(in, i) ^ r64(SECRET, s), r64(in, i + 8) ^ r64(SECRET, s + 8));
    }

    /** XXH128_mix32B on acc = {low, high}, in place. */
    private static void mix32B(long[] acc, byte[] in, int i1, int i2, int s) {
        acc[0] += mix16B(in, i1, s);
        acc[0] ^= r64(in, i2) + r64(in, i2 + 8);
        acc[1] += mix16B(in, i2, s + 16);
        acc[1] ^= r64(in, i1) + r64(in, i1 + 8);
    }

    private static long[] finishMid(long[] acc, int len) {
        long lo = acc[0] + acc[1];
        long hi = acc[0] * P64_1 + acc[1] * P64_4 + (long) len * P64_2;
        return new long[] {avalanche(lo), -avalanche(hi)};
    }

    // ---- length paths --------------------------------------------------------------------

    private static long[] len0to16(byte[] in, int len) {
        if (len > 8) {                                             // 9..16
            long bitflipl = r64(SECRET, 32) ^ r64(SECRET, 40);
            long bitfliph = r64(SECRET, 48) ^ r64(SECRET, 56);
            long inLo = r64(in, 0), inHi = r64(in, len - 8);
            long x = inLo ^ inHi ^ bitflipl;
            long mLo = x * P64_1, mHi = mulHi(x, P64_1);
            mLo += (long) (len - 1) << 54;
            inHi ^= bitfliph;
            mHi += inHi + (inHi & 0xFFFFFFFFL) * (P32_2 - 1);
            mLo ^= Long.reverseBytes(mHi);
            long hLo = mLo * P64_2;
            long hHi = mulHi(mLo, P64_2) + mHi * P64_2;
            return new long[] {avalanche(hLo), avalanche(hHi)};
        }
        if (len >= 4) {                                            // 4..8
            long in64 = r32(in, 0) + (r32(in, len - 4) << 32);
            long keyed = in64 ^ (r64(SECRET, 16) ^ r64(SECRET, 24));
            long m = P64_1 + ((long) len << 2);
            long lo = keyed * m, hi = mulHi(keyed, m);
            hi += lo << 1;
            lo ^= hi >>> 3;
            lo ^= lo >>> 35; lo *= PRIME_MX2; lo ^= lo >>> 28;
            return new long[] {lo, avalanche(hi)};
        }
        if (len > 0) {                                             // 1..3
            int c1 = in[0] & 0xFF, c2 = in[len >> 1] & 0xFF, c3 = in[len - 1] & 0xFF;
            int combinedl = (c1 << 16) | (c2 << 24) | c3 | (len << 8);
            int combinedh = Integer.rotateLeft(Integer.reverseBytes(combinedl), 13);
            long bitflipl = r32(SECRET, 0) ^ r32(SECRET, 4);
            long bitfliph = r32(SECRET, 8) ^ r32(SECRET, 12);
            return new long[] {
                xxh64Avalanche((combinedl & 0xFFFFFFFFL) ^ bitflipl),
                xxh64Avalanche((combinedh & 0xFFFFFFFFL) ^ bitfliph)};
        }
        return new long[] {                                        // 0
            xxh64Avalanche(r64(SECRET, 64) ^ r64(SECRET, 72)),
            xxh64Avalanche(r64(SECRET, 80) ^ r64(SECRET, 88))};
    }

    private static long[] len17to128(byte[] in, int len) {
        long[] acc = {len * P64_1, 0};
        if (len > 32) {
            if (len > 64) {
                if (len > 96) mix32B(acc, in, 48, len - 64, 96);
                mix32B(acc, in, 32, len - 48, 64);
            }
            mix32B(acc, in, 16, len - 32, 32);
        }
        mix32B(acc, in, 0, len - 16, 0);
        return finishMid(acc, len);
    }

    private static long[] len129to240(byte[] in, int len) {
        long[] acc = {len * P64_1, 0};
        for (int i = 32; i < 160; i += 32) mix32B(acc, in, i - 32, i - 16, i - 32);
        acc[0] = avalanche(acc[0]);
        acc[1] = avalanche(acc[1]);
        for (int i = 160; i <= len; i += 32) mix32B(acc, in, i - 32, i - 16, MIDSIZE_STARTOFFSET + i - 160);
        mix32B(acc, in, len - 16, len - 32, SECRET_SIZE_MIN - MIDSIZE_LASTOFFSET - 16);
        return finishMid(acc, len);
    }

    // ---- long inputs (> 240 bytes): stripes of 64 bytes, blocks of 16 stripes, scramble per block ----

    private static void accumulate512(long[] acc, byte[] in, int i, int s) {
        for (int lane = 0; lane < ACC_NB; lane++) {
            long data = r64(in, i + lane * 8);
            long key = data ^ r64(SECRET, s + lane * 8);
            acc[lane ^ 1] += data;                                  // swap adjacent lanes
            acc[lane] += (key & 0xFFFFFFFFL) * (key >>> 32);
        }
    }

    private static void scramble(long[] acc, int s) {
        for (int lane = 0; lane < ACC_NB; lane++) {
            long a = acc[lane];
            a ^= a >>> 47;
            a ^= r64(SECRET, s + lane * 8);
            acc[lane] = a * P32_1;
        }
    }

    private static long mergeAccs(long[] acc, int s, long start) {
        long r = start;
        for (int i = 0; i < 4; i++)
            r += fold64(acc[2 * i] ^ r64(SECRET, s + 16 * i), acc[2 * i + 1] ^ r64(SECRET, s + 16 * i + 8));
        return avalanche(r);
    }

    private static long[] hashLong(byte[] in, int len) {
        long[] acc = {P32_3, P64_1, P64_2, P64_3, P64_4, P32_2, P64_5, P32_1};
        int secretSize = SECRET.length;
        int stripesPerBlock = (secretSize - STRIPE_LEN) / SECRET_CONSUME_RATE;
        int blockLen = STRIPE_LEN * stripesPerBlock;
        int nbBlocks = (len - 1) / blockLen;
        for (int n = 0; n < nbBlocks; n++) {
            for (int k = 0; k < stripesPerBlock; k++)
                accumulate512(acc, in, n * blockLen + k * STRIPE_LEN, k * SECRET_CONSUME_RATE);
            scramble(acc, secretSize - STRIPE_LEN);
        }
        int nbStripes = ((len - 1) - blockLen * nbBlocks) / STRIPE_LEN;  // last partial block
        for (int k = 0; k < nbStripes; k++)
            accumulate512(acc, in, nbBlocks * blockLen + k * STRIPE_LEN, k * SECRET_CONSUME_RATE);
        accumulate512(acc, in, len - STRIPE_LEN, secretSize - STRIPE_LEN - SECRET_LASTACC_START);  // last stripe
        long lo = mergeAccs(acc, SECRET_MERGEACCS_START, len * P64_1);
        long hi = mergeAccs(acc, secretSize - 64 - SECRET_MERGEACCS_START, ~(len * P64_2));
        return new long[] {lo, hi};
    }
}
