#version 330 core
// Packs the rendered picture into yuv420p for the H.264 recorder, on the GPU: the target is an
// R8 texture W wide and 3H/2 tall whose bytes, row after row, are exactly FFmpeg's planar
// layout (Y: H rows of W; then U and V: H/2 rows of W/2 each, back to back). Rows come out
// top-down, so the CPU neither flips, converts nor scales: it reads half the bytes of RGBA and
// hands them to the encoder.
// BT.709, limited range (16-235 / 16-240), chroma = the mean of each 2x2 block (centre sited).
uniform sampler2D u_src;  // the picture, RGBA8 premultiplied over black, GL rows (bottom-up)
uniform ivec2 u_size;     // picture width, height (both even)
out vec4 f_color;

vec3 rgb_at(int x, int y) {  // y counts from the top of the picture
    return texelFetch(u_src, ivec2(x, u_size.y - 1 - y), 0).rgb;
}

void main() {
    int w = u_size.x, h = u_size.y;
    ivec2 p = ivec2(gl_FragCoord.xy);
    int idx = p.y * w + p.x;  // byte offset in the yuv420p buffer
    float v;
    if (idx < w * h) {
        vec3 c = rgb_at(idx % w, idx / w);
        v = (16.0 + 219.0 * dot(c, vec3(0.2126, 0.7152, 0.0722))) / 255.0;
    } else {
        int j = idx - w * h;
        int q = (w / 2) * (h / 2);
        int plane = j / q;  // 0: U (Cb), 1: V (Cr)
        int k = j - plane * q;
        int cx = k % (w / 2), cy = k / (w / 2);
        vec3 c = 0.25 * (rgb_at(2 * cx, 2 * cy) + rgb_at(2 * cx + 1, 2 * cy)
                         + rgb_at(2 * cx, 2 * cy + 1) + rgb_at(2 * cx + 1, 2 * cy + 1));
        float y = dot(c, vec3(0.2126, 0.7152, 0.0722));
        float d = plane == 0 ? (c.b - y) / 1.8556 : (c.r - y) / 1.5748;
        v = (128.0 + 224.0 * d) / 255.0;
    }
    f_color = vec4(v, 0.0, 0.0, 1.0);
}
