// How the colored map meets the background. m is 1 where the map passes the threshold.
// Alpha is straight (the caller premultiplies for screens and H.264) and real: with nothing
// under the map (background none, or none available) the map itself is the alpha, and the
// threshold cuts holes, so a ProRes 4444 file composites over other footage in an editor.
#define COMPOSITE_HEATMAP 0
#define COMPOSITE_OVERLAY 1
#define COMPOSITE_MULTIPLY 2
#define COMPOSITE_SCREEN 3
#define COMPOSITE_ALPHA 4

vec4 composite(int mode, vec3 heat, float n, float m, vec3 bg, bool has_bg, float opacity) {
    if (mode == COMPOSITE_HEATMAP) return vec4(heat, m);  // opaque but where the threshold masks
    if (mode == COMPOSITE_ALPHA) return has_bg ? vec4(bg, n * m) : vec4(heat, n * m);  // attention is the alpha
    if (!has_bg) return vec4(heat, opacity * n * m);  // the map fades out where attention is low
    vec3 blended = heat;
    if (mode == COMPOSITE_MULTIPLY) blended = bg * heat;
    if (mode == COMPOSITE_SCREEN) blended = 1.0 - (1.0 - bg) * (1.0 - heat);
    return vec4(mix(bg, blended, opacity * m), 1.0);
}
