#version 330 core
// A textured rectangle (overlays: help, status, errors). u_rect = x0, y0, x1, y1 in NDC.
in vec2 in_pos;
uniform vec4 u_rect;
out vec2 v_uv;
void main() {
    v_uv = vec2(in_pos.x * 0.5 + 0.5, 0.5 - in_pos.y * 0.5);  // row 0 of the image at the top
    gl_Position = vec4(mix(u_rect.xy, u_rect.zw, in_pos * 0.5 + 0.5), 0.0, 1.0);
}
