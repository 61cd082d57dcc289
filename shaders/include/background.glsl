// Pass 1 input: the generated video (one tile) or the per-step previews (one tile per step),
// RGBA8 tiles packed like the map tiles in one 3D texture (time in z), read texel by texel.
uniform sampler3D u_bg;
uniform int u_bg_z0;       // frame before the current time (the video: the nearest frame)
uniform int u_bg_z1;       // frame after it
uniform float u_bg_zfrac;  // weight of the frame after it (the video: 0, whole frames only)

// one tile (origin org in the atlas) at texel (x, y), linear in time
vec3 bg_tile(vec2 org, ivec2 texel) {
    ivec2 p = ivec2(org) + texel;
    vec3 a = texelFetch(u_bg, ivec3(p, u_bg_z0), 0).rgb;
    if (u_bg_zfrac > 0.0) a = mix(a, texelFetch(u_bg, ivec3(p, u_bg_z1), 0).rgb, u_bg_zfrac);
    return a;
}
