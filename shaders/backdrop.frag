#version 330 core
// Pass 1 (background resolution, only when the video frame, the previews' time or the cells
// change): each distinct background tile at the current time, the previews blended in time
// and across steps, into one RGBA8 texture; pass 2 (attention.frag) reads it with one
// bilinear sample.
#include "background.glsl"

flat in vec2 v_cell;
flat in vec4 v_org;
flat in float v_mix;
out vec4 frag;

void main() {
    ivec2 texel = ivec2(gl_FragCoord.xy - v_cell);
    vec3 a = bg_tile(v_org.xy, texel);
    if (v_mix > 0.0) a = mix(a, bg_tile(v_org.zw, texel), v_mix);
    frag = vec4(a, 1.0);
}
