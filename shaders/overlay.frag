#version 330 core
// Text and panels rasterized on the CPU (only when their content changes), drawn with blending.
uniform sampler2D u_image;
in vec2 v_uv;
out vec4 frag;
void main() { frag = texture(u_image, v_uv); }
