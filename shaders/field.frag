#version 330 core
// Pass 1 (map resolution, only when time, the cells, the selection or the ranges change): for
// every cell and map texel, each of the cell's crossfade tiles (up to four) at the current
// time, normalized by its range, in the channels of one texel: R (1 tap), RG (2), RGBA (3-4).
// Pass 2 (attention.frag) reads them all with one bilinear sample.
#include "atlas.glsl"

uniform int u_taps;   // channels in use
flat in vec2 v_cell;
flat in vec4 v_org01;
flat in vec4 v_org23;
flat in vec4 v_lo;
flat in vec4 v_scale;
out vec4 frag;

void main() {
    ivec2 texel = ivec2(gl_FragCoord.xy - v_cell);
    vec4 v = vec4(0.0);
    v.x = tap_norm(v_org01.xy, texel, v_lo.x, v_scale.x);
    if (u_taps > 1) v.y = tap_norm(v_org01.zw, texel, v_lo.y, v_scale.y);
    if (u_taps > 2) v.z = tap_norm(v_org23.xy, texel, v_lo.z, v_scale.z);
    if (u_taps > 3) v.w = tap_norm(v_org23.zw, texel, v_lo.w, v_scale.w);
    frag = v;
}
