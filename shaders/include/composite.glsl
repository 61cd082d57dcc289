// How the colored map meets the background. m is 1 where the map passes the threshold.
#define COMPOSITE_HEATMAP 0
#define COMPOSITE_OVERLAY 1
#define COMPOSITE_MULTIPLY 2
#define COMPOSITE_SCREEN 3
#define COMPOSITE_ALPHA 4

vec4 composite(int mode, vec3 heat, float n, float m, vec3 bg, float opacity) {
    if (mode == COMPOSITE_HEATMAP) return vec4(heat * m, 1.0);
    if (mode == COMPOSITE_ALPHA) return vec4(bg, n * m);  // attention is the video's alpha
    vec3 blended = heat;
    if (mode == COMPOSITE_MULTIPLY) blended = bg * heat;
    if (mode == COMPOSITE_SCREEN) blended = 1.0 - (1.0 - bg) * (1.0 - heat);
    return vec4(mix(bg, blended, opacity * m), 1.0);
}
